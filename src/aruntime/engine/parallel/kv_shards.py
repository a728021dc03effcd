"""A parallel group's KV blocks as whole blocks, for the KV connector (tiers, the transport).

A block's payload is the concatenation of every rank's shard — every layer of every stage,
every KV head of every shard, [layers, 2, kv_heads, block_size, head_dim] — the very bytes
one rank's engine holds for that block. Why not each rank saving its own shard under the
same key, its rank in the format: then only a group of the same shape could restore a block,
and the cache directory, the router and the transport would each have to know group shapes.
With whole blocks they are unchanged, and a block saved by TP=2 restores into TP=1, PP=2 or
TP=4 alike. The price: rank 0 receives every shard of a block it saves, and sends every
block it restores to every rank (each keeps its part).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from aruntime.engine.config import ModelConfig
from aruntime.engine.parallel.pipeline import stage_config, stage_layers
from aruntime.engine.parallel.shard import Shard, kv_heads_of
from aruntime.engine.runner import block_tensors, blocks_of, payload_of
from aruntime.kv.block_format import BlockPayload


@dataclass(frozen=True, slots=True)
class ReadBlocks:
    """Rank 0 to every rank: send me your shard of these blocks."""

    block_ids: list[int]


@dataclass(frozen=True, slots=True)
class WriteBlocks:
    """Rank 0 to every rank: keep your part of these whole blocks (already checked)."""

    block_ids: list[int]
    payloads: list[BlockPayload]


@dataclass(frozen=True, slots=True)
class ShardPlace:
    """Where one rank's shard sits in a whole block."""

    layers: range
    kv_heads: range


class ShardLink(Protocol):
    """What the whole-block view needs of the group (engine/parallel/group.py)."""

    def send(self, message: ReadBlocks | WriteBlocks) -> None: ...
    def recv_from(self, t: torch.Tensor, rank: int) -> None: ...


def places(mc: ModelConfig, tp: int, pp: int) -> list[ShardPlace]:
    """Each rank's place, by rank (`stage * tp + t`)."""
    staged = stage_config(mc, pp)
    out = []
    for rank in range(tp * pp):
        stage, t = divmod(rank, tp)
        heads = range(mc.num_key_value_heads) if tp == 1 else kv_heads_of(staged, Shard(t, tp))
        out.append(ShardPlace(stage_layers(mc, stage, pp), heads))
    return out


def keep_part(kv_cache: torch.Tensor, place: ShardPlace, message: WriteBlocks) -> None:
    """A rank's part of whole blocks written into its own KV pool."""
    layers, heads = place.layers, place.kv_heads
    wholes = block_tensors(message.payloads, message.payloads[0].shape, kv_cache.dtype)
    for block_id, whole in zip(message.block_ids, wholes, strict=True):
        kv_cache[:, :, :, block_id] = whole[layers.start:layers.stop, :,
                                            heads.start:heads.stop].to(kv_cache.device)


class WholeBlocks:
    """Rank 0's KV pool seen as whole blocks (the KV connector's DeviceBlocks)."""

    def __init__(self, kv_cache: torch.Tensor, mc: ModelConfig, tp: int, pp: int,
                 link: ShardLink) -> None:
        self.kv_cache, self.link = kv_cache, link
        self.places = places(mc, tp, pp)
        _, _, _, _, block_size, head_dim = kv_cache.shape
        self.shape = (mc.num_hidden_layers, 2, mc.num_key_value_heads, block_size, head_dim)

    def read_blocks(self, block_ids: list[int]) -> list[BlockPayload]:
        self.link.send(ReadBlocks(block_ids))
        whole = torch.empty(len(block_ids), *self.shape, dtype=self.kv_cache.dtype)
        for rank, place in enumerate(self.places):
            if rank == 0:
                part = blocks_of(self.kv_cache, block_ids).cpu()
            else:
                part = torch.empty(len(block_ids), len(place.layers), 2, len(place.kv_heads),
                                   *self.shape[3:], dtype=self.kv_cache.dtype)
                self.link.recv_from(part, rank)
            whole[:, place.layers.start:place.layers.stop, :,
                  place.kv_heads.start:place.kv_heads.stop] = part
        return [payload_of(b) for b in whole]

    def write_blocks(self, block_ids: list[int], payloads: list[BlockPayload]) -> None:
        if not payloads:
            return
        # checked here, so no rank ever sees a block it cannot keep
        block_tensors(payloads, self.shape, self.kv_cache.dtype)
        message = WriteBlocks(block_ids, payloads)
        self.link.send(message)
        keep_part(self.kv_cache, self.places[0], message)
