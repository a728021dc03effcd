"""The backend seam: a backend turns one dense part of the model (a module whose inputs are its
activations and weights) into a callable for a dtype, its rows dimension left dynamic. What a
backend cannot express — the paged KV gather and attention, sampling — stays in the engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

Compiled = Callable[..., tuple[torch.Tensor, ...]]  # a part's inputs -> its outputs, as a tuple
ROWS = 0  # the dimension of activations that varies with the step (tokens in it)
# Which inputs vary, and where: the first N inputs along ROWS (a part's activations), or per
# input its dynamic dimensions by name (a whole step's graph: rows and context, say)
Dynamic = int | tuple[dict[int, str] | None, ...]


class BackendUnavailable(RuntimeError):
    """The backend's package is not installed here, or it cannot run this model."""


class Backend(ABC):
    name: str
    # True: compiled once per layer with that layer's weights as constants (graph runtimes fold
    # and pre-pack them; passed as inputs they lose several times over to eager). False: one
    # compilation for every layer, the weights passed in.
    binds_weights: bool = False

    @abstractmethod
    def missing(self) -> str | None:
        """Why it cannot run here (a package to install), or None when it can."""

    @abstractmethod
    def version(self) -> str:
        """What its compiled artefacts depend on (the package's version)."""

    @abstractmethod
    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...],
                activations: Dynamic, cache_dir: Path, key: str) -> Compiled:
        """`part` for inputs shaped like `examples`, whose first `activations` inputs have a
        dynamic rows dimension (the rest are weights, fixed in shape), or whose dimensions
        named per input vary. Artefacts go to `cache_dir` under `key`, which names the model,
        the part and its weights."""


def as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def missing_packages(*packages: str) -> str | None:
    """The first of `packages` not installed, said as what to do about it; None: all are."""
    for package in packages:
        if package_version(package) is None:
            return f"{package} is not installed (pip install 'aruntime[backends]')"
    return None


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


class BoundWeights(nn.Module):
    """A part with one layer's weights as its own buffers: exported, they are constants."""

    def __init__(self, part: nn.Module, weights: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.part, self.count = part, len(weights)
        for i, w in enumerate(weights):
            self.register_buffer(f"w{i}", w.detach())

    def forward(self, *activations: torch.Tensor) -> Any:
        return self.part(*activations, *(getattr(self, f"w{i}") for i in range(self.count)))
