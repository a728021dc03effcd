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
# NAME+graph: the backend runs each decode step as one graph, the KV cache its explicit inputs
# and outputs (engine/backends/graph.py); prefill steps run on its parts
GRAPH = "+graph"
# NAME@PART: a delegate — the backend takes that part of every layer (`after`: the output
# projection and the MLP), eager the rest; the gate checks the partitioned model as a whole
DELEGATED = ("after",)


def names() -> list[str]:
    """Every backend, each one's whole-graph variant (eager's runs the graph in PyTorch), and
    each compiled one as a delegate of its parts."""
    return [*BACKENDS, *(f"{n}{GRAPH}" for n in BACKENDS),
            *(f"{n}@{part}" for n in BACKENDS if n != EAGER for part in DELEGATED)]


def known(name: str) -> bool:
    return name in names()


def base_of(name: str) -> str:
    return name.removesuffix(GRAPH).partition("@")[0]


def backend(name: str) -> Backend:
    """The backend behind `name` (a variant's is its base's)."""
    if not known(name):
        raise ValueError(f"no backend {name!r}; there are {', '.join(names())}")
    return BACKENDS[base_of(name)]()


def listing() -> list[dict[str, Any]]:
    out = []
    for name in names():
        b = backend(name)
        missing = b.missing()
        out.append({"name": name, "available": missing is None,
                    "version": b.version() if missing is None else None, "missing": missing})
    return out
