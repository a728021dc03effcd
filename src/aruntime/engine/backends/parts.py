"""What the model runner calls the dense parts through: for each step, the backend its phase
and bucket should run on — one forced by `--backends NAME`, or the cost table's cheapest under
`auto` — with eager for whatever no compiled backend holds. Built once per engine: every
backend it may use is compiled and passes the gate (parts, then greedy tokens on whole
prompts, checked by the engine) before the first request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aruntime.engine.backends.base import BackendUnavailable, BoundWeights, Compiled, as_tuple
from aruntime.engine.backends.gate import PROBE_ROWS, Probe, check
from aruntime.engine.backends.registry import EAGER, GRAPH, backend
from aruntime.engine.backends.table import CostTable
from aruntime.engine.model import HEAD

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine
    from aruntime.engine.model import LlamaForCausalLM

logger = logging.getLogger(__name__)
ACTIVATIONS = {"before": 3, "after": 2, "head": 1}  # inputs with a rows dimension, per part


def probes(model: LlamaForCausalLM, rows_set: tuple[int, ...] = PROBE_ROWS,
           seed: int = 1234) -> list[Probe]:
    """Seeded activations at each row count, with the first and last layers' own weights."""
    cfg = model.cfg
    dtype = model.norm.weight.dtype
    gen = torch.Generator().manual_seed(seed)
    layers = sorted({0, cfg.num_hidden_layers - 1})
    out = []
    for rows in rows_set:
        x = torch.randn(rows, cfg.hidden_size, generator=gen).to(dtype)
        attn = torch.randn(rows, cfg.num_attention_heads * cfg.head_dim, generator=gen).to(dtype)
        cos, sin = model.rotary.tables(torch.arange(rows), dtype)
        for i in layers:
            out.append(Probe("before", i, rows, (x, cos, sin, *model.weights_of("before", i))))
            out.append(Probe("after", i, rows, (x, attn, *model.weights_of("after", i))))
        out.append(Probe("head", HEAD, rows, (x, *model.weights_of("head", HEAD))))
    return out


def eager_parts(model: LlamaForCausalLM) -> dict[str, Compiled]:
    """Each part as (layer, *inputs) -> outputs, run eagerly."""
    return {name: (lambda layer, *i, p=part: as_tuple(p(*i)))
            for name, part in model.parts.items()}


def _layers(model: LlamaForCausalLM, part: str) -> list[int]:
    return [HEAD] if part == "head" else list(range(model.cfg.num_hidden_layers))


def compile_parts(model: LlamaForCausalLM, name: str, cache_dir: Path,
                  revision: str = "") -> dict[str, Compiled]:
    """Every part of the model on backend `name` (a delegate, `NAME@PART`: that part, eager
    the rest) — once, or once per layer with its weights bound — gated against eager
    (GateRefused, or BackendUnavailable, when it cannot serve)."""
    b = backend(name)
    missing = b.missing()
    if missing is not None:
        raise BackendUnavailable(f"backend {name}: {missing}")
    if name.endswith(GRAPH):  # its parts for prefill steps, and the decode graph
        from aruntime.engine.backends.graph import compile_graph

        base = name.removesuffix(GRAPH)
        parts = compile_parts(model, base, cache_dir, revision)
        return {**parts, "graph": compile_graph(model, base, cache_dir, revision)}
    examples = {(p.part, p.layer): tuple(t.detach() for t in p.inputs)
                for p in probes(model, (8,))}
    dtype = str(model.norm.weight.dtype).removeprefix("torch.")
    started = time.monotonic()
    compiled: dict[str, Compiled] = {}
    delegated = name.partition("@")[2]
    for part, module in model.parts.items():
        n = ACTIVATIONS[part]
        if delegated and part != delegated:
            compiled[part] = eager_parts(model)[part]
            continue
        if not b.binds_weights:
            one = b.compile(module, examples[(part, _layers(model, part)[0])], n, cache_dir,
                            f"{revision}/{dtype}/{part}")
            compiled[part] = lambda layer, *i, f=one: f(*i)
            continue
        per_layer = {}
        for layer in _layers(model, part):
            bound = BoundWeights(module, model.weights_of(part, layer))
            per_layer[layer] = b.compile(bound, examples[(part, 0 if layer != HEAD else HEAD)][:n],
                                         n, cache_dir, f"{revision}/{dtype}/{part}{layer}")
        compiled[part] = lambda layer, *i, fs=per_layer, k=n: fs[layer](*i[:k])
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

    def choose(self, phase: str, rows: int, context: int | None = None) -> str:
        """The backend a step of this phase and bucket (and context, for a decode) runs on."""
        name = self.forced or (self.table.choose(phase, rows, set(self.compiled), context)
                               if self.table else EAGER)
        self.used[name] = self.used.get(name, 0) + 1
        return name if name in self.compiled else EAGER

    def graph_of(self, name: str) -> Compiled | None:
        """Its whole decode-step graph, if it has one."""
        return self.compiled.get(name, {}).get("graph")

    def for_step(self, name: str) -> Any:
        """`run(part, layer, *inputs)` on backend `name`'s parts."""
        parts = self.compiled.get(name) or self.compiled[EAGER]

        def run(part: str, layer: int, *inputs: torch.Tensor) -> Any:
            try:
                out = parts[part](layer, *inputs)
            except Exception as exc:  # a runtime failing at serving time: eager from now on
                out = self._fall_back(name, part, exc)(layer, *inputs)
            return out if part == "before" else out[0]

        return run

    def _fall_back(self, name: str, part: str, exc: Exception) -> Compiled:
        return self.compiled[self.drop(name, f"part {part}", exc)][part]

    def drop(self, name: str, what: str, exc: Exception) -> str:
        """Backend `name` failed on `what` while serving: eager serves from now on."""
        logger.error("backend %s failed on %s (%s: %s); eager serves instead from now on",
                     name, what, type(exc).__name__, str(exc)[:200])
        if name != EAGER:
            self.compiled.pop(name, None)
        return EAGER


@contextmanager
def probing(engine: LLMEngine) -> Iterator[Callable[[dict[str, dict[str, Compiled]], str], None]]:
    """While probe requests run on `engine` (the gate's, the calibration's): prefix caching off,
    so every token is computed by the backend under test, and a `force(compiled, name)` that
    puts every step on one backend; the engine's dispatch and caching as they were after."""
    runner, pool = engine.runner, engine.pool
    dispatch, caching = runner.dispatch, pool.enable_caching
    pool.enable_caching = False

    def force(compiled: dict[str, dict[str, Compiled]], name: str) -> None:
        runner.dispatch = PartDispatch(compiled, forced=name)

    try:
        yield force
    finally:
        runner.dispatch, pool.enable_caching = dispatch, caching


def build_dispatch(spec: str, model: LlamaForCausalLM, backends_dir: Path,
                   table_file: Path, revision: str) -> PartDispatch | None:
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
                compiled[name] = compile_parts(model, name, cache, revision)
            except Exception as exc:  # auto falls back to eager for this backend, and says so
                logger.warning("--backends auto: %s is not used: %s", name, exc)
        return PartDispatch(compiled, table)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if name != EAGER:
            compiled[name] = compile_parts(model, name, cache, revision)  # refused: stops
    if table is not None and len(names) > 1:
        return PartDispatch(compiled, table)
    return PartDispatch(compiled, forced=names[0])
