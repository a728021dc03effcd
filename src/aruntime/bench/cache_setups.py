"""`bench cache`'s measured set-ups: one engine per set-up replaying the slice one request at a
time, each request's TTFT and cached prompt tokens, and the tiers' restore time and bytes."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aruntime.bench.cache_workload import BLOCK, Request
from aruntime.bench.stats import p90
from aruntime.engine.config import EngineConfig
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams


@dataclass
class SetupResult:
    name: str
    ttft_s: list[float]
    cached_tokens: list[int]
    prompt_tokens: int
    output_tokens: int
    wall_s: float
    restore: dict[str, tuple[float, int]]  # tier -> (seconds, bytes)

    @property
    def hit_rate(self) -> float:
        return sum(self.cached_tokens) / self.prompt_tokens

    @property
    def ttft_p50(self) -> float:
        return statistics.median(self.ttft_s)

    @property
    def ttft_p90(self) -> float:
        return p90(self.ttft_s)


def replay(name: str, model_dir: Path, requests: list[Request], **config: Any) -> SetupResult:
    engine = LLMEngine(EngineConfig(model=str(model_dir), block_size=BLOCK, **config))
    ttft, cached = [], []
    start = time.perf_counter()
    for i, r in enumerate(requests):
        params = SamplingParams(max_tokens=r.output_tokens, temperature=0.0, ignore_eos=True)
        t0 = time.perf_counter()
        engine.add_request(f"{name}-{i}", r.prompt, params)
        first = None
        while engine.has_unfinished_requests():
            for out in engine.step():
                if first is None:
                    first = time.perf_counter() - t0
                    cached.append(out.num_cached_tokens)
        ttft.append(first or 0.0)
    wall = time.perf_counter() - start
    restore = {}
    if engine.kv is not None:
        engine.kv.tiers.flush()
        restore = {t: (engine.kv.restore_seconds[t], engine.kv.restore_bytes[t])
                   for t in engine.kv.restore_seconds}
        engine.kv.close()
    return SetupResult(name, ttft, cached, sum(len(r.prompt) for r in requests),
                       sum(r.output_tokens for r in requests), wall, restore)
