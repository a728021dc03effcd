"""The decoder's dense parts on one tensor-parallel rank: the same functions as the whole
model's (engine/model_parts.py) with the collectives where Megatron puts them — an all-reduce
of the output projection's partial sums and one of the MLP's (each rank holds the rows of its
heads and columns), and the LM head's vocabulary slices gathered into whole logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from aruntime.engine.config import ModelConfig
from aruntime.engine.model_parts import AfterAttention, Head, parts_of, rms_norm

Reduce = Callable[[torch.Tensor], None]  # sum a tensor in place across the group
Gather = Callable[[torch.Tensor], list[torch.Tensor]]  # every rank's tensor, in rank order


class TPAfterAttention(AfterAttention):
    def __init__(self, cfg: ModelConfig, reduce: Reduce) -> None:
        super().__init__(cfg)
        self.reduce = reduce

    def forward(self, x: torch.Tensor, attn: torch.Tensor, o_w: torch.Tensor,
                ln_w: torch.Tensor, gate_up_w: torch.Tensor,
                down_w: torch.Tensor) -> torch.Tensor:
        partial = attn @ o_w
        self.reduce(partial)
        x = x + partial
        gate, up = (rms_norm(x, ln_w, self.eps) @ gate_up_w).chunk(2, dim=-1)
        mlp = (nn.functional.silu(gate) * up) @ down_w
        self.reduce(mlp)
        out: torch.Tensor = x + mlp
        return out


class TPHead(Head):
    def __init__(self, cfg: ModelConfig, gather: Gather, vocab_size: int) -> None:
        super().__init__(cfg)
        self.gather, self.vocab_size = gather, vocab_size

    def forward(self, x: torch.Tensor, norm_w: torch.Tensor, lm_w: torch.Tensor) -> torch.Tensor:
        local = (rms_norm(x, norm_w, self.eps) @ lm_w).float().contiguous()
        return torch.cat(self.gather(local), dim=-1)[:, :self.vocab_size]


def tp_parts_of(local: ModelConfig, reduce: Reduce, gather: Gather,
                vocab_size: int) -> dict[str, nn.Module]:
    parts = parts_of(local)  # before attention needs no collective: x is whole on every rank
    parts["after"] = TPAfterAttention(local, reduce)
    parts["head"] = TPHead(local, gather, vocab_size)
    return parts
