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
    """A model N ranks can share, or a ValueError naming what does not divide. With at least
    as many KV heads as ranks, each rank takes whole KV groups (their query heads with them),
    as even as they go: SmolLM2's 3 KV heads over 2 ranks are 2 and 1. With fewer, each KV
    head is replicated on the ranks its query heads are split over, which must divide."""
    heads, kv = mc.num_attention_heads, mc.num_key_value_heads
    if mc.intermediate_size < world:
        raise ValueError(f"--tensor-parallel {world}: the model's MLP has only "
                         f"{mc.intermediate_size} columns")
    if kv < world and (world % kv or heads % world):
        raise ValueError(f"--tensor-parallel {world}: its {kv} KV heads are fewer than the "
                         f"ranks, and {world} ranks do not split their {heads} attention "
                         f"heads evenly between them")


def split(n: int, world: int, rank: int) -> range:
    """Rank r's contiguous share of n things, the first n % world ranks one more (rank 0 has
    the most KV heads, so its pool, sized by the same bytes as every rank's, has the fewest
    blocks: every block id its scheduler hands out exists on every rank)."""
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


def kv_heads_of(mc: ModelConfig, shard: Shard) -> range:
    """The KV heads rank r holds: its share, or the one its query heads use (replicated)."""
    kv, world = mc.num_key_value_heads, shard.world
    if kv >= world:
        return split(kv, world, shard.rank)
    first_q = q_heads_of(mc, shard).start
    group = mc.num_attention_heads // kv  # query heads per KV head
    return range(first_q // group, first_q // group + 1)


def q_heads_of(mc: ModelConfig, shard: Shard) -> range:
    """The attention heads rank r computes: those of its KV heads, or its even share."""
    heads, kv = mc.num_attention_heads, mc.num_key_value_heads
    if kv >= shard.world:
        mine, group = kv_heads_of(mc, shard), heads // kv
        return range(mine.start * group, mine.stop * group)
    per = heads // shard.world
    return range(shard.rank * per, (shard.rank + 1) * per)


def vocab_rows(mc: ModelConfig, world: int) -> int:
    return -(-mc.vocab_size // world)


def local_config(mc: ModelConfig, shard: Shard) -> ModelConfig:
    check_shardable(mc, shard.world)
    return dataclasses.replace(
        mc, num_attention_heads=len(q_heads_of(mc, shard)),
        num_key_value_heads=len(kv_heads_of(mc, shard)),
        intermediate_size=len(split(mc.intermediate_size, shard.world, shard.rank)),
        tie_word_embeddings=False)


def _rows(t: torch.Tensor, first: int, count: int) -> torch.Tensor:
    return t[first:first + count].contiguous()


def local_weights(weights: dict[str, torch.Tensor], mc: ModelConfig,
                  shard: Shard) -> dict[str, torch.Tensor]:
    """Rank r's tensors, Hugging Face-named, from the whole checkpoint's."""
    w = {k.removeprefix("model."): v for k, v in weights.items()}
    d, r, v_per = mc.head_dim, shard.rank, vocab_rows(mc, shard.world)
    q, kv = q_heads_of(mc, shard), kv_heads_of(mc, shard)
    cols = split(mc.intermediate_size, shard.world, r)
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
            out[a + "q_proj." + name] = _rows(w[a + "q_proj." + name], q.start * d, len(q) * d)
            for kv_name in ("k_proj.", "v_proj."):
                out[a + kv_name + name] = _rows(w[a + kv_name + name], kv.start * d, len(kv) * d)
        out[a + "o_proj.weight"] = w[a + "o_proj.weight"][:, q.start * d:q.stop * d]
        for proj in ("gate_proj", "up_proj"):
            out[m + proj + ".weight"] = _rows(w[m + proj + ".weight"], cols.start, len(cols))
        out[m + "down_proj.weight"] = w[m + "down_proj.weight"][:, cols.start:cols.stop]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[p + norm + ".weight"] = w[p + norm + ".weight"]
    return out
