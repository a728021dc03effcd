"""The reference: the part itself, run by PyTorch as the model always ran it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from aruntime.engine.backends.base import Backend, Compiled, Dynamic, as_tuple


class EagerBackend(Backend):
    name = "eager"

    def missing(self) -> str | None:
        return None

    def version(self) -> str:
        return f"torch-{torch.__version__}"

    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...],
                activations: Dynamic, cache_dir: Path, key: str) -> Compiled:
        return lambda *inputs: as_tuple(part(*inputs))
