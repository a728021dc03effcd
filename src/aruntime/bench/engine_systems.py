"""ARuntime's side of `bench engine`: the throughput run (every request added at once, `step()`
until done: continuous batching) and the TTFT probes with prefix caching on and off. Also the
`SystemRun` both systems report in."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aruntime.bench.engine_workload import Request, greedy
from aruntime.bench.model_costs import kv_budget
from aruntime.engine.config import EngineConfig, ModelConfig

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine


@dataclass(slots=True)
class SystemRun:
    name: str
    wall_s: float
    cpu_s: float  # this process's CPU time, all threads: steadier than wall time when shared
    outputs: dict[str, list[int]]  # request id -> its own output tokens
    prefill_tokens: int  # prompt positions computed, padding included
    rows: list[dict[str, Any]]  # the per-request raw log
    cached: dict[str, int] = field(default_factory=dict)  # request id -> prompt tokens cached
    extra: dict[str, float | int] = field(default_factory=dict)

    @property
    def output_tokens(self) -> int:
        return sum(len(t) for t in self.outputs.values())

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.wall_s


def new_engine(model_dir: Path, kv_cache_bytes: int, **overrides: Any) -> LLMEngine:
    from aruntime.engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(model=str(model_dir), kv_cache_bytes=kv_cache_bytes,
                                  max_num_seqs=64, max_num_batched_tokens=2048, **overrides))


def run_aruntime(model_dir: Path, requests: list[Request], m: ModelConfig
                 ) -> tuple[SystemRun, str]:
    """All requests added at once to a fresh engine (a warm prefix cache would flatter a second
    round), `step()` until done. Returns the run and the model's revision digest."""
    engine = new_engine(model_dir, kv_budget(
        m, [len(r.prompt) + r.max_tokens for r in requests] + [64]))
    engine.generate([list(range(3, 35))], greedy(4))  # warm-up, as the baseline gets one
    preempted = engine.stats().num_preempted_total
    outputs: dict[str, list[int]] = {r.id: [] for r in requests}
    rows: dict[str, dict[str, Any]] = {
        r.id: {"id": r.id, "prompt": len(r.prompt), "max_tokens": r.max_tokens} for r in requests}
    t0, c0 = time.perf_counter(), time.process_time()
    for r in requests:
        engine.add_request(r.id, r.prompt, greedy(r.max_tokens))
    while engine.has_unfinished_requests():
        for out in engine.step():
            now = time.perf_counter() - t0
            row = rows[out.request_id]
            outputs[out.request_id].extend(out.new_token_ids)
            if out.new_token_ids and "ttft_s" not in row:
                row["ttft_s"] = round(now, 4)
            if out.finished:
                row.update(e2e_s=round(now, 4), cached=out.num_cached_tokens,
                           finish=out.finish_reason, output=len(outputs[out.request_id]))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cached: dict[str, int] = {rid: row["cached"] for rid, row in rows.items()}
    prefill = sum(len(r.prompt) - cached[r.id] for r in requests)
    run = SystemRun("aruntime", wall, cpu, outputs, prefill, list(rows.values()), cached, {
        "preempted": engine.stats().num_preempted_total - preempted,
        "ttft_p50_s": statistics.median(row["ttft_s"] for row in rows.values()),
        "e2e_p50_s": statistics.median(row["e2e_s"] for row in rows.values()),
    })
    revision = str(engine.revision)
    del engine
    gc.collect()
    return run, revision


def first_token_s(engine: LLMEngine, request_id: str, prompt: list[int]) -> tuple[float, int]:
    """Seconds from add_request to the first output token, and the prompt tokens found cached."""
    t0 = time.perf_counter()
    engine.add_request(request_id, prompt, greedy(1))
    ttft, cached = None, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == request_id:
                if out.new_token_ids and ttft is None:
                    ttft = time.perf_counter() - t0
                cached = max(cached, out.num_cached_tokens)
    if ttft is None:
        raise RuntimeError(f"the engine finished {request_id} without a token")
    return ttft, cached


def measure_ttft(model_dir: Path, probes: list[list[int]],
                 m: ModelConfig) -> dict[bool, list[tuple[float, int]]]:
    """TTFT with prefix caching on (True) and off (False): (seconds, cached tokens) per probe.

    Both engines first run the fill prompt (it fills the cache; it warms either engine) and a
    first probe, not counted: on the cached engine it is the first prefill over a cached
    context, whose one-time costs (new kernel shapes) would otherwise weigh on a median of
    few. Then each probe (the shared prefix, a fresh suffix) runs on one engine and then the
    other, so a burst of load from elsewhere on the machine hits both sides alike."""
    kv = kv_budget(m, [len(p) + 1 for p in probes[:2]])
    engines = {caching: new_engine(model_dir, kv, enable_prefix_caching=caching)
               for caching in (True, False)}
    results: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
    for engine in engines.values():
        first_token_s(engine, "ttft-fill", probes[0])
        first_token_s(engine, "ttft-warm", probes[1])
    for i, prompt in enumerate(probes[2:]):
        for caching, engine in engines.items():
            results[caching].append(first_token_s(engine, f"ttft-{i}", prompt))
    del engines, engine
    gc.collect()
    return results
