"""The backends by name, and what `aruntime backends list` says of each."""

from __future__ import annotations

from typing import Any

from aruntime.engine.backends.base import Backend
from aruntime.engine.backends.eager import EagerBackend
from aruntime.engine.backends.iree_backend import IreeBackend
from aruntime.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
from aruntime.engine.backends.openvino_backend import OpenVinoBackend
from aruntime.engine.backends.torch_compile import TorchCompileBackend

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (
    EagerBackend, TorchCompileBackend, OnnxRuntimeBackend, OpenVinoBackend, IreeBackend)}
EAGER = "eager"


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"no backend {name!r}; there are {', '.join(BACKENDS)}")
    return BACKENDS[name]()


def listing() -> list[dict[str, Any]]:
    out = []
    for name in BACKENDS:
        b = backend(name)
        missing = b.missing()
        out.append({"name": name, "available": missing is None,
                    "version": b.version() if missing is None else None, "missing": missing})
    return out
