"""ONNX Runtime: the part's ONNX file on the CPU execution provider (CUDA's where present)."""

from __future__ import annotations

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


class OnnxRuntimeBackend(Backend):
    binds_weights = True
    name = "onnxruntime"

    def missing(self) -> str | None:
        return missing_packages("onnxruntime", *ONNX_PACKAGES)

    def version(self) -> str:
        return f"onnxruntime-{package_version('onnxruntime')}"

    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...],
                activations: Dynamic, cache_dir: Path, key: str) -> Compiled:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = torch.get_num_threads()
        # one session a layer's part: threads that spin after each call would take the cores
        # from torch's own between the calls (attention runs eagerly in between)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        session = ort.InferenceSession(str(export(part, examples, activations, cache_dir, key)),
                                       options, providers=providers)
        names = [i.name for i in session.get_inputs()]

        def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feed: dict[str, Any] = {n: t.detach().numpy() for n, t in zip(names, inputs,
                                                                         strict=True)}
            return tuple(torch.from_numpy(o) for o in session.run(None, feed))

        return run
