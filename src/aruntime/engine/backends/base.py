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


class BackendUnavailable(RuntimeError):
    """The backend's package is not installed here, or it cannot run this model."""


class Backend(ABC):
    name: str

    @abstractmethod
    def missing(self) -> str | None:
        """Why it cannot run here (a package to install), or None when it can."""

    @abstractmethod
    def version(self) -> str:
        """What its compiled artefacts depend on (the package's version)."""

    @abstractmethod
    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...], activations: int,
                cache_dir: Path) -> Compiled:
        """`part` for inputs shaped like `examples`, whose first `activations` inputs have a
        dynamic rows dimension (the weights are fixed in shape). Artefacts go to `cache_dir`."""


def as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
