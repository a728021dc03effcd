"""Pipeline parallelism: the decoder's layers split into M stages of L/M each, stage s a rank
of its own (rank 0, the engine, is stage 0). A stage's model is the plain decoder over its own
layers (renumbered from 0, so its KV pool holds its layers' blocks under the same block ids
as every other stage's). Each step, stage 0 embeds the tokens and runs its layers, the hidden
states go to stage 1 and on, and the last stage's logits come back to rank 0, which samples."""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol

import torch
from torch import nn

from aruntime.engine.attention import AttentionBatch
from aruntime.engine.config import ModelConfig
from aruntime.engine.model import Dispatch, LlamaForCausalLM

LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")


class PointToPoint(Protocol):
    stage: int
    pp: int
    tp_rank: int

    def peer(self, stage: int) -> int: ...
    def send(self, t: torch.Tensor, dst: int) -> None: ...
    def recv(self, t: torch.Tensor, src: int) -> None: ...


def check_stages(mc: ModelConfig, stages: int) -> None:
    if mc.num_hidden_layers % stages:
        raise ValueError(f"--pipeline-parallel {stages}: the model's {mc.num_hidden_layers} "
                         f"layers do not divide by {stages}")


def stage_layers(mc: ModelConfig, stage: int, stages: int) -> range:
    per = mc.num_hidden_layers // stages
    return range(stage * per, (stage + 1) * per)


def stage_config(mc: ModelConfig, stages: int) -> ModelConfig:
    check_stages(mc, stages)
    return dataclasses.replace(mc, num_hidden_layers=mc.num_hidden_layers // stages)


def stage_weights(weights: dict[str, torch.Tensor], mc: ModelConfig, stage: int,
                  stages: int) -> dict[str, torch.Tensor]:
    """Stage s's layers, renumbered from 0, and the embedding, final norm and LM head."""
    mine = stage_layers(mc, stage, stages)
    out = {}
    for name, t in weights.items():
        m = LAYER.match(name)
        if m is None:
            out[name] = t
        elif int(m.group(1)) in mine:
            out[f"layers.{int(m.group(1)) - mine.start}.{m.group(2)}"] = t
    return out


class PipelineStage(nn.Module):
    """One stage's step: its input (the tokens, or the previous stage's hidden states), its
    layers, its output (to the next stage, or the logits to rank 0)."""

    def __init__(self, model: LlamaForCausalLM, comm: PointToPoint, vocab_size: int) -> None:
        super().__init__()
        self.model, self.comm, self.vocab_size = model, comm, vocab_size
        self.stage, self.last = comm.stage, comm.pp - 1

    def forward(self, tokens: torch.Tensor, batch: AttentionBatch, rows: torch.Tensor,
                dispatch: Dispatch | None = None) -> torch.Tensor:
        m = self.model
        if self.stage == 0:
            x = m.embed_tokens(tokens)
        else:
            x = torch.empty(tokens.shape[0], m.cfg.hidden_size, dtype=m.norm.weight.dtype)
            self.comm.recv(x, self.comm.peer(self.stage - 1))
        x = m.run_layers(x, batch, dispatch)
        if self.stage < self.last:
            self.comm.send(x.contiguous(), self.comm.peer(self.stage + 1))
            if self.stage > 0 or self.comm.tp_rank > 0:
                return x  # nothing to return to anyone: only rank 0 samples
            logits = torch.empty(rows.shape[0], self.vocab_size, dtype=torch.float32)
            self.comm.recv(logits, self.comm.peer(self.last))
            return logits
        logits = m.logits(x, rows, dispatch).contiguous()  # whole: the shards gathered
        if self.comm.tp_rank == 0 and self.last > 0:
            self.comm.send(logits, 0)
        return logits
