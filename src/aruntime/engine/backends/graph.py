"""The whole decode step on a compiled backend (engine/model_graph.py's graph): compiled once
with the rows and the context length dynamic, gated against the same graph run eagerly, and run
by the model runner for a decode-only step — it gathers each layer's past K and V dense from
the paged cache in one copy each, calls the graph once, and writes the new K and V back to
their slots; everything the parts' dispatch would have crossed into the backend 61 times."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from aruntime.engine.backends.base import Compiled, as_tuple
from aruntime.engine.backends.gate import Probe, check
from aruntime.engine.backends.registry import GRAPH, backend
from aruntime.engine.model import HEAD
from aruntime.engine.model_graph import DecodeGraph

if TYPE_CHECKING:
    from aruntime.engine.model import LlamaForCausalLM

# token ids, cos, sin, past K, past V, the context mask: what varies, and along which axis
DYNAMIC: tuple[dict[int, str] | None, ...] = (
    {0: "rows"}, {0: "rows"}, {0: "rows"}, {2: "rows", 3: "context"}, {2: "rows", 3: "context"},
    {0: "rows", 1: "context"})
PROBES = ((1, 16), (3, 48), (8, 64))  # (rows, context) the gate checks
PART = "decode graph"  # how the gate names it


def graph_inputs(model: LlamaForCausalLM, rows: int, context: int,
                 seed: int = 7) -> tuple[torch.Tensor, ...]:
    """Seeded inputs of one decode step over `context` cached positions, some masked."""
    cfg, dtype = model.cfg, model.norm.weight.dtype
    gen = torch.Generator().manual_seed(seed + rows * 1000 + context)
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, rows, context, cfg.head_dim)
    positions = torch.randint(context // 2, context, (rows,), generator=gen)
    mask = torch.arange(context)[None, :] < positions[:, None]
    cos, sin = model.rotary.tables(positions, dtype)
    return (torch.randint(0, cfg.vocab_size, (rows,), generator=gen), cos, sin,
            torch.randn(shape, generator=gen).to(dtype),
            torch.randn(shape, generator=gen).to(dtype), mask)


def compile_graph(model: LlamaForCausalLM, name: str, cache_dir: Path,
                  revision: str = "") -> Compiled:
    """The decode graph on backend `name`, through the gate: at each probe, its logits and new
    K and V within its dtype's tolerance, times its layers, of the same graph run eagerly
    (GateRefused naming it, the bucket and the largest difference; BackendUnavailable when it
    cannot run)."""
    graph = DecodeGraph(model).eval()
    dtype = model.norm.weight.dtype
    with torch.no_grad():
        compiled = backend(name).compile(graph, graph_inputs(model, 2, 32), DYNAMIC, cache_dir,
                                         f"{revision}/{str(dtype).removeprefix('torch.')}/"
                                         "decode-graph")
    probes = [Probe(PART, HEAD, rows, graph_inputs(model, rows, context))
              for rows, context in PROBES]
    check(f"{name}{GRAPH}", {PART: lambda layer, *i: compiled(*i)},
          {PART: lambda layer, *i: as_tuple(graph(*i))}, probes, dtype,
          layers=model.cfg.num_hidden_layers)
    return compiled


def run_graph(graph: Compiled, model: LlamaForCausalLM, kv_cache: torch.Tensor,
              token_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
              tables: list[list[int]], block_size: int) -> torch.Tensor:
    """One decode step of len(tables) rows: the logits [rows, vocab]; the new K and V written
    into `kv_cache` [layers, 2, kv_heads, blocks, block_size, d] at `slots`."""
    layers, _, kv_heads, num_blocks, _, d = kv_cache.shape
    rows, width = len(tables), max(len(t) for t in tables)
    ids = torch.tensor([b for t in tables for b in t + [0] * (width - len(t))])  # 0: filler
    past = [kv_cache[:, i].index_select(2, ids).view(layers, kv_heads, rows, width * block_size, d)
            for i in range(2)]
    mask = torch.arange(width * block_size)[None, :] < positions[:, None]  # the cached tokens
    cos, sin = model.rotary.tables(positions, kv_cache.dtype)
    logits, new_k, new_v = graph(token_ids, cos, sin, past[0], past[1], mask)
    for i, new in enumerate((new_k, new_v)):
        kv_cache[:, i].view(layers, kv_heads, num_blocks * block_size, d).index_copy_(
            2, slots, new.to(kv_cache.dtype).transpose(1, 2))
    return logits
