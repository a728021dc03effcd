"""`aruntime backends calibrate`: time every backend that passes the gate on this machine, per
phase and bucket — one step's dense work, every layer's parts and the head, median of repeats —
and store the table the engine's `auto` reads (engine/backends/table.py)."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from aruntime.engine.backends.base import Compiled
from aruntime.engine.backends.parts import compile_parts, eager_parts
from aruntime.engine.backends.registry import BACKENDS, EAGER, backend
from aruntime.engine.backends.table import CostTable
from aruntime.engine.model import HEAD, LlamaForCausalLM

logger = logging.getLogger(__name__)
DECODE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PREFILL_BUCKETS = (16, 64, 256, 1024)


def step_seconds(model: LlamaForCausalLM, parts: dict[str, Compiled], phase: str, rows: int,
                 repeats: int) -> float:
    """The median time of one step's dense work at `rows` tokens on these parts."""
    cfg = model.cfg
    dtype = model.norm.weight.dtype
    x = torch.randn(rows, cfg.hidden_size).to(dtype)
    attn = torch.randn(rows, cfg.num_attention_heads * cfg.head_dim).to(dtype)
    cos, sin = model.rotary.tables(torch.arange(rows) % model.rotary.cos.shape[0], dtype)
    sampled = x if phase == "decode" else x[-1:]  # a prefill chunk samples its last token
    layers = model.decoder_layers()
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first, a warm-up, is not counted
            started = time.perf_counter()
            for layer in layers:
                i = layer.layer_idx
                parts["before"](i, x, cos, sin, *layer.before_weights())
                parts["after"](i, x, attn, *layer.after_weights())
            parts["head"](HEAD, sampled, *model.weights_of("head", HEAD))
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def calibrate(model: LlamaForCausalLM, revision: str, dtype: str, names: Iterable[str],
              backends_dir: Path, buckets: dict[str, tuple[int, ...]],
              repeats: int = 5) -> CostTable:
    from aruntime.bench.hardware import describe, summary

    table = CostTable(revision, dtype, summary(describe("cpu")), {})
    usable: dict[str, dict[str, Compiled]] = {EAGER: eager_parts(model)}
    for name in names:
        if name == EAGER:
            continue
        try:
            usable[name] = compile_parts(model, name, backends_dir / "cache", revision)
        except Exception as exc:  # refused or missing: recorded, and the others go on
            table.refused[name] = str(exc)
            logger.warning("backend %s: %s", name, exc)
    table.versions = {name: backend(name).version() for name in usable}
    for phase, rows_set in buckets.items():
        for rows in rows_set:
            table.seconds[f"{phase}/{rows}"] = {
                name: step_seconds(model, parts, phase, rows, repeats)
                for name, parts in usable.items()}
    return table


def all_backends() -> list[str]:
    return list(BACKENDS)
