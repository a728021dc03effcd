"""torch.compile (TorchInductor, C++ on the CPU through gcc): the part traced with a dynamic
rows dimension, so one compilation serves every bucket; Inductor keeps its own cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from aruntime.engine.backends.base import Backend, Compiled, Dynamic, as_tuple

RECOMPILE_LIMIT = 64


class TorchCompileBackend(Backend):
    name = "torch-compile"

    def missing(self) -> str | None:
        if shutil.which("gcc") is None and shutil.which("cc") is None:
            return "no C compiler (gcc) for Inductor's CPU kernels"
        return None

    def version(self) -> str:
        return f"torch-{torch.__version__}"

    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...],
                activations: Dynamic, cache_dir: Path, key: str) -> Compiled:
        import torch._dynamo

        # every engine of the process compiles the same parts' code again, and sizes 1 and 2
        # are specialised: the default limit of 8 recompilations is soon reached
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit,
                                                 8 * RECOMPILE_LIMIT)
        compiled = torch.compile(part, dynamic=True, fullgraph=True)
        with torch.no_grad():
            compiled(*examples)  # compile now, not in a serving step
        return lambda *inputs: as_tuple(compiled(*inputs))
