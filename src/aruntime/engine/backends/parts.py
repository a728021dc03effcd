"""What the model runner calls the dense parts through: for each step, the backend its phase
and bucket should run on — one forced by `--backends NAME`, or the cost table's cheapest under
`auto` — with eager for whatever no compiled backend holds. Built once per engine: every
backend it may use is compiled and passes the gate (parts, then greedy tokens on whole
prompts, checked by the engine) before the first request."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aruntime.engine.backends.base import Compiled
from aruntime.engine.backends.gate import PROBE_ROWS, Probe, check
from aruntime.engine.backends.registry import EAGER, backend
from aruntime.engine.backends.table import CostTable

if TYPE_CHECKING:
    from aruntime.engine.model import LlamaForCausalLM

logger = logging.getLogger(__name__)
ACTIVATIONS = {"before": 3, "after": 2, "head": 1}  # inputs with a rows dimension, per part


def probes(model: LlamaForCausalLM, rows_set: tuple[int, ...] = PROBE_ROWS,
           seed: int = 1234) -> list[Probe]:
    """Seeded activations at each row count, with the first and last layers' own weights."""
    cfg = model.cfg
    dtype = model.norm.weight.dtype
    gen = torch.Generator().manual_seed(seed)
    layers = model.decoder_layers()
    out = []
    for rows in rows_set:
        x = torch.randn(rows, cfg.hidden_size, generator=gen).to(dtype)
        attn = torch.randn(rows, cfg.num_attention_heads * cfg.head_dim, generator=gen).to(dtype)
        cos, sin = model.rotary.tables(torch.arange(rows), dtype)
        for layer in {id(x): x for x in (layers[0], layers[-1])}.values():
            out.append(Probe("before", rows, (x, cos, sin, *layer.before_weights())))
            out.append(Probe("after", rows, (x, attn, *layer.after_weights())))
        out.append(Probe("head", rows, (x, model.norm.weight, model.lm_head.weight_t)))
    return out


def eager_parts(model: LlamaForCausalLM) -> dict[str, Compiled]:
    from aruntime.engine.backends.base import as_tuple

    return {name: (lambda *i, p=part: as_tuple(p(*i))) for name, part in model.parts.items()}


def compile_parts(model: LlamaForCausalLM, name: str, cache_dir: Path) -> dict[str, Compiled]:
    """Every part of the model on backend `name`, gated against eager (GateRefused, or
    BackendUnavailable, when it cannot serve)."""
    b = backend(name)
    missing = b.missing()
    if missing is not None:
        from aruntime.engine.backends.base import BackendUnavailable

        raise BackendUnavailable(f"backend {name}: {missing}")
    examples = {p.part: tuple(t.detach() for t in p.inputs) for p in probes(model, (8,))}
    started = time.monotonic()
    compiled = {part: b.compile(module, examples[part], ACTIVATIONS[part], cache_dir)
                for part, module in model.parts.items()}
    worst = check(name, compiled, eager_parts(model), probes(model), model.norm.weight.dtype)
    logger.info("backend %s compiled in %.1f s; through the gate (largest difference %.2g)",
                name, time.monotonic() - started, worst)
    return compiled


@dataclass
class PartDispatch:
    compiled: dict[str, dict[str, Compiled]]  # backend -> part -> callable (eager included)
    table: CostTable | None = None
    forced: str | None = None  # one backend for every step
    used: dict[str, int] = field(default_factory=dict)  # steps per backend, for the stats

    def for_step(self, phase: str, rows: int) -> Any:
        name = self.forced or (self.table.choose(phase, rows, set(self.compiled))
                               if self.table else EAGER)
        parts = self.compiled.get(name) or self.compiled[EAGER]
        self.used[name] = self.used.get(name, 0) + 1

        def run(part: str, *inputs: torch.Tensor) -> Any:
            out = parts[part](*inputs)
            return out if part == "before" else out[0]

        return run


def build_dispatch(spec: str, model: LlamaForCausalLM, backends_dir: Path,
                   table_file: Path) -> PartDispatch | None:
    """`eager` (None: the model's own path), `auto` (the cost table's backends, each gated; a
    missing table or a refused backend leaves eager, said in the log), or NAME[,NAME...] (each
    must pass the gate; the table chooses among them when there is one, else the first)."""
    if spec == EAGER:
        return None
    cache = backends_dir / "cache"
    table = CostTable.load(table_file) if table_file.is_file() else None
    compiled: dict[str, dict[str, Compiled]] = {EAGER: eager_parts(model)}
    if spec == "auto":
        if table is None:
            logger.warning("--backends auto: no cost table at %s (run `aruntime backends "
                           "calibrate`); every step runs eagerly", table_file)
            return None
        for name in sorted(table.winners() - {EAGER}):
            try:
                compiled[name] = compile_parts(model, name, cache)
            except Exception as exc:  # auto falls back to eager for this backend, and says so
                logger.warning("--backends auto: %s is not used: %s", name, exc)
        return PartDispatch(compiled, table)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if name != EAGER:
            compiled[name] = compile_parts(model, name, cache)  # refused: the engine stops
    if table is not None and len(names) > 1:
        return PartDispatch(compiled, table)
    return PartDispatch(compiled, forced=names[0])
