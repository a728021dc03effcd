"""IREE: the part's ONNX file imported to MLIR (`iree.compiler.tools.import_onnx`), compiled
for the host CPU (llvm-cpu), run on the local-task driver. The .vmfb is cached beside the ONNX
file, keyed by it and IREE's version."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aruntime.engine.backends.base import (
    Backend,
    BackendUnavailable,
    Compiled,
    Dynamic,
    missing_packages,
    package_version,
)
from aruntime.engine.backends.onnx_export import ONNX_PACKAGES, export


class IreeBackend(Backend):
    binds_weights = True
    name = "iree"

    def missing(self) -> str | None:
        return missing_packages("iree-base-compiler", "iree-base-runtime", *ONNX_PACKAGES)

    def version(self) -> str:
        return f"iree-{package_version('iree-base-compiler')}"

    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...],
                activations: Dynamic, cache_dir: Path, key: str) -> Compiled:
        import iree.runtime as rt

        onnx_file = export(part, examples, activations, cache_dir, key)
        vmfb = onnx_file.with_name(f"{onnx_file.stem}-{self.version()}.vmfb")
        if not vmfb.is_file():
            self._build(onnx_file, vmfb)
        context = rt.SystemContext(config=_config())
        context.add_vm_module(rt.VmModule.copy_buffer(context.instance, vmfb.read_bytes()))
        main = context.modules.module["main_graph"]

        def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = main(*(np.ascontiguousarray(t.detach().numpy()) for t in inputs))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            return tuple(torch.from_numpy(np.asarray(o.to_host())) for o in outs)

        return run

    @staticmethod
    def _build(onnx_file: Path, vmfb: Path) -> None:
        import iree.compiler as ic

        mlir = onnx_file.with_suffix(".mlir")
        done = subprocess.run([sys.executable, "-m", "iree.compiler.tools.import_onnx",
                               str(onnx_file), "-o", str(mlir)], capture_output=True, text=True)
        if done.returncode != 0:
            raise BackendUnavailable(f"IREE cannot import {onnx_file.name}: "
                                     f"{done.stderr.strip()[-200:]}")
        try:
            binary = ic.compile_file(str(mlir), target_backends=["llvm-cpu"],
                                     extra_args=["--iree-llvmcpu-target-cpu=host"])
        except ic.CompilerToolError as exc:
            raise BackendUnavailable(f"IREE cannot compile {onnx_file.name}: "
                                     f"{str(exc)[-200:]}") from None
        tmp = vmfb.with_suffix(".part")
        tmp.write_bytes(binary)
        tmp.replace(vmfb)


@functools.cache
def _config() -> Any:
    """One IREE device (its task executor) for every compiled part, not one a part."""
    import iree.runtime as rt

    return rt.Config("local-task")
