"""Pipeline parallelism: the decoder's layers split into M stages of L/M each, stage s a rank
of its own (rank 0, the engine, is stage 0). A stage's model is the plain decoder over its own
layers (renumbered from 0, so its KV pool holds its layers' blocks under the same block ids
as every other stage's). Each step is cut into micro-batches (`EngineConfig.micro_batches`);
stage 0 embeds each part's tokens and runs its layers, the hidden states go to stage 1 and
on while stage 0 starts the next part, and the last stage's logits come back to rank 0,
which samples."""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

import torch

from aruntime.engine.attention import AttentionBatch
from aruntime.engine.config import EngineConfig, ModelConfig
from aruntime.engine.model import LlamaForCausalLM
from aruntime.engine.runner import PlainStep, TPCollectives

LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")


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


def micro_steps(step: PlainStep, n: int, min_tokens: int) -> tuple[list[PlainStep], list[int]]:
    """The step cut at chunk boundaries (each decode row, each prefill chunk) into at most n
    parts of about equal tokens, none meant to be under `min_tokens`; and, for each of its
    logits rows, where that row is among the parts' rows laid end to end."""
    decodes, total = len(step.decode_tables), len(step.token_ids)
    n = max(1, min(n, total // max(1, min_tokens)))
    bounds = {*range(decodes + 1), *(p[0] for p in step.prefills), total}
    edges = sorted({0, total} | {_nearest(bounds, k * total / n) for k in range(1, n)})
    parts, flat = [], []
    for a, b in itertools.pairwise(edges):
        mine = [j for j, r in enumerate(step.rows) if a <= r < b]
        flat += mine
        parts.append(PlainStep(
            step.token_ids[a:b], step.positions[a:b], step.slots[a:b],
            [(row - a, num, start, table) for row, num, start, table in step.prefills
             if a <= row < b],
            step.decode_tables[a:min(b, decodes)], step.decode_lens[a:min(b, decodes)],
            [step.rows[j] - a for j in mine]))
    place = [0] * len(flat)
    for i, j in enumerate(flat):
        place[j] = i
    return parts, place


def _nearest(bounds: set[int], at: float) -> int:
    return min(bounds, key=lambda b: abs(b - at))


class PipelineStage:
    """One stage's side of a step in micro-batches: each part's input (the tokens, or the
    previous stage's hidden states), its layers, its output sent on without waiting (to the
    next stage, or the logits to rank 0), so that stage s runs part i+1 while stage s+1 runs
    part i; then rank 0 receives every part's logits."""

    def __init__(self, model: LlamaForCausalLM, comm: TPCollectives, vocab_size: int,
                 config: EngineConfig) -> None:
        self.model, self.comm, self.vocab_size = model, comm, vocab_size
        self.stage, self.last = comm.stage, comm.pp - 1
        # a step's parts: at most this many, none under `min_tokens`
        self.parts = config.micro_batches or config.pipeline_parallel
        self.min_tokens = config.micro_batch_tokens
        self._sent: list[tuple[Any, torch.Tensor]] = []  # (the send, its tensor kept till done)

    def part(self, tag: int, tokens: torch.Tensor, batch: AttentionBatch,
             rows: torch.Tensor) -> None:
        m, comm = self.model, self.comm
        if self.stage == 0:
            x = m.embed_tokens(tokens)
        else:
            x = torch.empty(tokens.shape[0], m.cfg.hidden_size, dtype=m.norm.weight.dtype,
                            device=tokens.device)
            comm.recv(x, comm.peer(self.stage - 1), tag)
        x = m.run_layers(x, batch)
        if self.stage < self.last:
            out = x.contiguous()
            self._sent.append((comm.isend(out, comm.peer(self.stage + 1), tag), out))
        else:  # the whole logits (the shards gathered), the first shard's back to rank 0
            logits = m.logits(x, rows).contiguous()
            if comm.tp_rank == 0:
                self._sent.append((comm.isend(logits, 0, tag), logits))

    def finish(self, rows: list[int]) -> torch.Tensor | None:
        """Rank 0: the parts' logits (`rows` of each), end to end; other ranks: None. Every
        send this stage started has completed when it returns."""
        logits = None
        if self.stage == 0 and self.comm.tp_rank == 0:
            device = self.model.norm.weight.device
            parts = [torch.empty(n, self.vocab_size, dtype=torch.float32, device=device)
                     for n in rows]
            for tag, part in enumerate(parts):
                self.comm.recv(part, self.comm.peer(self.last), tag)
            logits = torch.cat(parts)
        sent, self._sent = self._sent, []
        for work, _ in sent:
            self.comm.wait(work, "a send to the next stage")
        return logits
