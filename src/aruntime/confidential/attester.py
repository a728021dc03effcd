"""Attesters behind one seam: `attest(nonce, key_hash)` returns evidence of this boundary bound
to both. `SoftwareAttester` measures what it can from inside the process. Hardware attesters
(tsm.py: TDX and SNP through the kernel's configfs-tsm; gpu.py: NVIDIA GPU evidence) plug in
behind the same seam; `available_hardware()` says whether this machine could offer one (it
cannot: no configfs-tsm here).
"""

from __future__ import annotations

import hashlib
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path

from aruntime import __version__
from aruntime.confidential.evidence import SOFTWARE, Evidence
from aruntime.contracts.base import sha256_digest
from aruntime.evidence.signing import DeploymentKey

TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")


class Attester(ABC):
    """Called when a client or the key broker asks this boundary to prove itself; never
    changes what it measures."""

    type: str
    measurements: dict[str, str]  # what it measures besides the platform: package, model, config

    @abstractmethod
    def attest(self, nonce: str, key_hash: str) -> Evidence: ...


def package_digest() -> str:
    """A digest over the installed ARuntime package's files (names and bytes), so a changed
    line of its code changes the measurement."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def guest_measurements(model_revision: str,
                       config: Mapping[str, object] | None = None) -> dict[str, str]:
    """What any attester measures from inside: the package, the model and the serving
    config (a hardware report adds the platform's own, bound through its report data)."""
    return {"aruntime": package_digest(), "model": model_revision,
            "config": sha256_digest(dict(config or {}))}


def software_versions() -> dict[str, str]:
    return {"aruntime": __version__, "python": sys.version.split()[0],
            "cryptography": metadata.version("cryptography")}


class SoftwareAttester(Attester):
    """No TEE: measures the package, the model's revision and the serving config, and signs
    with a key it holds. Its reports always say `software`: they show what runs, never that
    hardware keeps anyone (the host included) out."""

    type = SOFTWARE

    def __init__(self, key: DeploymentKey, *, model_revision: str,
                 config: Mapping[str, object] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self._clock = clock
        self.measurements = guest_measurements(model_revision, config)

    def attest(self, nonce: str, key_hash: str) -> Evidence:
        unsigned = Evidence(SOFTWARE, nonce, key_hash, self.measurements,
                            versions=software_versions(),
                            debug=bool(sys.flags.dev_mode or sys.gettrace() is not None),
                            issued_at=int(self._clock()), signer=self.key.public_pem())
        signature = self.key.sign(unsigned.signed_bytes())
        return Evidence(**{**unsigned.to_json(), "signature": signature})


def available_hardware() -> list[str]:
    """The hardware attesters this machine offers (none here: configfs-tsm is absent, and
    NVIDIA's SDK, the nvidia-gpu extra, is not installed)."""
    from aruntime.confidential.gpu import sdk_present

    return ["tsm"] * TSM_REPORT_DIR.is_dir() + ["nvidia-gpu"] * sdk_present()


def boundary_attester(key: DeploymentKey, *, model_revision: str,
                      config: Mapping[str, object] | None = None) -> Attester:
    """The attester this boundary offers: the platform's where configfs-tsm is present, else
    the software attester (which says so in every report)."""
    if "tsm" in available_hardware():
        from aruntime.confidential.tsm import TsmAttester

        return TsmAttester(model_revision=model_revision, config=config)  # TDX or SNP
    return SoftwareAttester(key, model_revision=model_revision, config=config)
