"""Attention over the paged KV cache.

Cache layout per layer: [2, kv_heads, num_blocks, block_size, head_dim]. Gathering a sequence's
blocks along the block axis yields [kv_heads, seq_len, head_dim] that is already contiguous, so
decode attention needs one `index_select` per K and V into a reused scratch buffer and one SDPA
call for the whole decode batch: grouped-query heads ride as the query-length axis against their
shared KV head, so no KV head is ever repeated (PERF_NOTES: the repeat copies cost more than the
matmuls). Prefill chunks run one SDPA each, causal, over their cached context plus themselves.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from aruntime.engine import kernels


@dataclass(slots=True)
class PrefillSegment:
    row: int  # first row of this chunk in the flattened token batch
    num_tokens: int
    start: int  # tokens of the sequence already in the cache before this chunk
    block_ids: torch.Tensor | None  # blocks covering [0, start + num_tokens) when start > 0
    mask: torch.Tensor | None  # [num_tokens, start + num_tokens] causal mask when start > 0


@dataclass(slots=True)
class DecodeGroup:
    """Single-token steps of similar context length, padded to one width and run as one SDPA."""

    row: int
    num_seqs: int
    max_blocks: int
    block_ids: torch.Tensor  # [num_seqs * max_blocks], padded with a filler block
    mask: torch.Tensor  # [1, num_seqs, 1, max_blocks * block_size]


class NativeDecode:
    """The C kernel `kernels/paged_decode.c` (fp32, CPU): reads K and V in place from the paged
    cache, sequences in parallel on torch's own OpenMP threads."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.fn = lib.paged_decode_attention
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int] * 7 + [ctypes.c_float]

    @classmethod
    def create(cls) -> NativeDecode | None:
        lib = kernels.load("paged_decode")
        return None if lib is None else cls(lib)

    def __call__(self, q: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor,
                 lens: torch.Tensor) -> torch.Tensor:
        q = q.contiguous()
        out = torch.empty_like(q)
        b, heads, d = q.shape
        kv_heads, num_blocks, block_size, _ = cache.shape[1:]
        ptrs = [t.data_ptr() for t in (q, cache[0], cache[1], tables, lens, out)]
        if self.fn(*ptrs, b, heads, kv_heads, d, num_blocks, block_size, tables.shape[1],
                   d ** -0.5) != 0:
            raise MemoryError("paged decode attention could not allocate its score buffer")
        return out


@dataclass(slots=True)
class NativeDecodeInputs:
    rows: int  # decode rows [0, rows) of the flattened batch
    tables: torch.Tensor  # int32 [rows, max_blocks]
    lens: torch.Tensor  # int32 [rows]


@dataclass(slots=True)
class AttentionBatch:
    kv_cache: torch.Tensor  # [layers, 2, kv_heads, num_blocks, block_size, head_dim]
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T] cache slot (block * block_size + offset) of each new token
    decodes: list[DecodeGroup] = field(default_factory=list)
    native: NativeDecode | None = None
    native_inputs: NativeDecodeInputs | None = None
    prefills: list[PrefillSegment] = field(default_factory=list)
    scratch: torch.Tensor | None = None  # flat buffer reused for gathered K and V


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: AttentionBatch,
                    layer: int) -> torch.Tensor:
    """q: [T, heads, d]; k, v: [T, kv_heads, d] for the new tokens. Writes k, v to the cache,
    returns attention output [T, heads, d]."""
    cache = batch.kv_cache[layer]
    kv_heads, num_blocks, block_size, d = cache.shape[1:]
    for i, new in enumerate((k, v)):
        cache[i].view(kv_heads, num_blocks * block_size, d).index_copy_(
            1, batch.slot_mapping, new.transpose(0, 1))
    out = torch.empty_like(q)
    if batch.native_inputs is not None:
        n, native = batch.native_inputs, batch.native
        assert native is not None  # the runner sets both or neither
        out[:n.rows] = native(q[:n.rows], cache, n.tables, n.lens)
    for group in batch.decodes:
        rows = slice(group.row, group.row + group.num_seqs)
        assert batch.scratch is not None  # sized by the runner for its largest group
        out[rows] = _decode(q[rows], cache, group, batch.scratch)
    for seg in batch.prefills:
        rows = slice(seg.row, seg.row + seg.num_tokens)
        qs = q[rows].transpose(0, 1).unsqueeze(0)
        if seg.start == 0:
            o = F.scaled_dot_product_attention(
                qs, k[rows].transpose(0, 1).unsqueeze(0), v[rows].transpose(0, 1).unsqueeze(0),
                is_causal=True, enable_gqa=True)
        else:
            length = seg.start + seg.num_tokens
            assert seg.block_ids is not None  # a chunk after cached context has its blocks
            ks, vs = (cache[i].index_select(1, seg.block_ids).view(kv_heads, -1, d)[:, :length]
                      .unsqueeze(0) for i in range(2))
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=seg.mask, enable_gqa=True)
        out[rows] = o[0].transpose(0, 1)
    return out


def _decode(q: torch.Tensor, cache: torch.Tensor, group: DecodeGroup,
            scratch: torch.Tensor) -> torch.Tensor:
    b, heads, d = q.shape
    kv_heads, _, block_size, _ = cache.shape[1:]
    n = b * group.max_blocks
    gathered = []
    for i in range(2):
        size = kv_heads * n * block_size * d
        buf = scratch[i * size:(i + 1) * size].view(kv_heads, n, block_size, d)
        torch.index_select(cache[i], 1, group.block_ids, out=buf)
        gathered.append(buf.view(kv_heads, b, group.max_blocks * block_size, d))
    qd = q.reshape(b, kv_heads, heads // kv_heads, d).transpose(0, 1)  # [kv_heads, b, group, d]
    o = F.scaled_dot_product_attention(qd, gathered[0], gathered[1], attn_mask=group.mask)
    return o.transpose(0, 1).reshape(b, heads, d)
