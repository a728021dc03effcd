"""Megatron-style tensor parallelism of the one model definition: rank r of N holds its share
of the attention heads (q/k/v rows, o_proj columns), of the key/value heads — or, when there
are fewer KV heads than ranks, the one its query heads share (replicated) — of the MLP (gate and
up rows, down columns) and of the vocabulary (the LM head's rows, the last padded); the
embedding and the norms whole. A rank's model is the plain decoder over its local config, so
the paged KV pool, the block ids and the attention are unchanged: every rank holds its heads'
part of the same blocks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from aruntime.engine.config import ModelConfig


@dataclass(frozen=True, slots=True)
class Shard:
    rank: int
    world: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is outside a group of {self.world}")


def check_shardable(mc: ModelConfig, world: int) -> None:
    """A model N ranks can share, or a ValueError naming what does not divide."""
    heads, kv = mc.num_attention_heads, mc.num_key_value_heads
    for what, n in (("attention heads", heads), ("MLP columns", mc.intermediate_size)):
        if n % world:
            raise ValueError(f"--tensor-parallel {world}: the model's {n} {what} do not "
                             f"divide by {world}")
    if kv % world and world % kv:
        raise ValueError(f"--tensor-parallel {world}: its {kv} KV heads neither divide by "
                         f"{world} nor divide {world}")


def kv_heads_of(mc: ModelConfig, shard: Shard) -> range:
    """The KV heads rank r holds: its share, or the one its query heads use (replicated)."""
    kv, world = mc.num_key_value_heads, shard.world
    if kv >= world:
        per = kv // world
        return range(shard.rank * per, (shard.rank + 1) * per)
    group = mc.num_attention_heads // kv  # query heads per KV head
    first_q = shard.rank * (mc.num_attention_heads // world)
    return range(first_q // group, first_q // group + 1)


def vocab_rows(mc: ModelConfig, world: int) -> int:
    return -(-mc.vocab_size // world)


def local_config(mc: ModelConfig, shard: Shard) -> ModelConfig:
    check_shardable(mc, shard.world)
    return dataclasses.replace(
        mc, num_attention_heads=mc.num_attention_heads // shard.world,
        num_key_value_heads=len(kv_heads_of(mc, shard)),
        intermediate_size=mc.intermediate_size // shard.world, tie_word_embeddings=False)


def _rows(t: torch.Tensor, first: int, count: int) -> torch.Tensor:
    return t[first:first + count].contiguous()


def local_weights(weights: dict[str, torch.Tensor], mc: ModelConfig,
                  shard: Shard) -> dict[str, torch.Tensor]:
    """Rank r's tensors, Hugging Face-named, from the whole checkpoint's."""
    w = {k.removeprefix("model."): v for k, v in weights.items()}
    d, r, n = mc.head_dim, shard.rank, shard.world
    q_per, i_per, v_per = mc.num_attention_heads // n, mc.intermediate_size // n, vocab_rows(mc, n)
    kv = kv_heads_of(mc, shard)
    lm = w.get("lm_head.weight", w["embed_tokens.weight"])
    if mc.tie_word_embeddings:
        lm = w["embed_tokens.weight"]
    head = torch.zeros(v_per, mc.hidden_size, dtype=lm.dtype)
    mine = _rows(lm, r * v_per, v_per)
    head[:mine.shape[0]] = mine
    out = {"embed_tokens.weight": w["embed_tokens.weight"], "norm.weight": w["norm.weight"],
           "lm_head.weight": head}
    for i in range(mc.num_hidden_layers):
        p = f"layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        for name in ("weight", "bias"):
            if a + "q_proj." + name not in w:
                continue
            out[a + "q_proj." + name] = _rows(w[a + "q_proj." + name], r * q_per * d, q_per * d)
            for kv_name in ("k_proj.", "v_proj."):
                out[a + kv_name + name] = _rows(w[a + kv_name + name], kv.start * d, len(kv) * d)
        out[a + "o_proj.weight"] = w[a + "o_proj.weight"][:, r * q_per * d:(r + 1) * q_per * d]
        for proj in ("gate_proj", "up_proj"):
            out[m + proj + ".weight"] = _rows(w[m + proj + ".weight"], r * i_per, i_per)
        out[m + "down_proj.weight"] = w[m + "down_proj.weight"][:, r * i_per:(r + 1) * i_per]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[p + norm + ".weight"] = w[p + norm + ".weight"]
    return out
