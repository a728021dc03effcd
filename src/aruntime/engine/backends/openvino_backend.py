"""OpenVINO: reads the part's ONNX file and compiles it for its CPU plugin, at f32 inference
precision (the plugin's default on CPUs with bf16 units is bf16, which the gate refuses)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aruntime.engine.backends.base import (
    Backend,
    Compiled,
    Dynamic,
    missing_packages,
    package_version,
)
from aruntime.engine.backends.onnx_export import ONNX_PACKAGES, export


class OpenVinoBackend(Backend):
    binds_weights = True
    name = "openvino"

    def missing(self) -> str | None:
        return missing_packages("openvino", *ONNX_PACKAGES)

    def version(self) -> str:
        return f"openvino-{package_version('openvino')}"

    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...],
                activations: Dynamic, cache_dir: Path, key: str) -> Compiled:

        precision = "f32" if examples[0].dtype == torch.float32 else "bf16"
        compiled = _core().compile_model(
            str(export(part, examples, activations, cache_dir, key)), "CPU",
            {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": "1",
             "INFERENCE_NUM_THREADS": str(torch.get_num_threads())})
        request = compiled.create_infer_request()
        outputs = list(compiled.outputs)

        def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            result = request.infer([t.detach().numpy() for t in inputs])
            return tuple(torch.from_numpy(result[o].copy()) for o in outputs)

        return run


@functools.cache
def _core() -> Any:
    """One OpenVINO runtime for every compiled part: one executor, not one a part."""
    import openvino as ov

    return ov.Core()
