"""Native CPU kernels, compiled once per machine with the system C compiler and loaded through
ctypes. Each has a pure-PyTorch equivalent that is used where the kernel cannot be built (no
compiler, another dtype, a CUDA device); tests check that both compute the same function."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from aruntime import paths

logger = logging.getLogger(__name__)

# Reassociation lets the compiler vectorise dot products; no -ffast-math, which would also
# switch the whole process to flush-to-zero when the library loads.
CFLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno",
          "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


@cache
def load(name: str) -> ctypes.CDLL | None:
    """Build (once, cached under ARUNTIME_HOME/kernels) and load `name`.c; None if impossible."""
    if os.environ.get("ARUNTIME_NATIVE_KERNELS", "1") == "0":
        return None
    source = Path(__file__).with_name(f"{name}.c")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found: using the PyTorch path for %s", name)
        return None
    digest = hashlib.sha256(source.read_bytes() + " ".join(CFLAGS).encode()
                            + compiler.encode() + _cpu_model().encode()).hexdigest()[:16]
    target = paths.home() / "kernels" / f"{name}-{digest}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run([compiler, *CFLAGS, "-o", str(built), str(source), "-lm"],
                                    capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                logger.warning("could not build %s (using the PyTorch path): %s", name,
                               result.stderr.strip()[-500:])
                return None
            os.replace(built, target)  # atomic: a racing process loads either copy
    return ctypes.CDLL(str(target))
