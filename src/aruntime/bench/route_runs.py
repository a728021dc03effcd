"""One `bench route` run of a policy: a fresh pool of workers, its warm-up, then every group's
turns sent open-loop at their scheduled times, a turn only once the previous answer is back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aruntime.bench.route_results import PolicyResult
from aruntime.bench.route_stream import send
from aruntime.bench.route_warmup import warm_up
from aruntime.bench.route_workload import RouteWorkload, Sent
from aruntime.engine.config import EngineConfig


async def drive(pool: Any, policy: str, groups: list[list[Sent]]) -> PolicyResult:
    rows: list[tuple[Sent, str, float, float, int]] = []
    start = time.perf_counter()

    async def user(turns: list[Sent]) -> None:
        for s in turns:  # a turn goes out once its time came and the last answer is back
            delay = start + s.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the load generator's clock, not a synchronisation
            rid = f"{policy}-{s.group}-{s.turn}"
            sent = time.perf_counter() - start
            out = await send(pool, rid, s.prompt, s.output_tokens)
            rows.append((s, rid, sent, out.ttft_s, out.cached))

    await asyncio.gather(*(user(turns) for turns in groups))
    rows.sort(key=lambda r: r[2])
    routes = [pool.route_of(rid) for _, rid, *_ in rows]
    return PolicyResult(
        policy, [r[0] for r in rows], [r[3] for r in rows], [r[2] for r in rows],
        [route.predicted_cached_tokens for route in routes], [r[4] for r in rows],
        [route.worker for route in routes])


def run_policy(config: EngineConfig, policy: str, groups: list[list[Sent]],
               w: RouteWorkload, longest: int) -> PolicyResult:
    from aruntime.cluster.pool import WorkerPool

    pool = WorkerPool(config, w.workers, policy, seed=w.seed)
    pool.start()
    try:
        async def main() -> PolicyResult:
            measured = await warm_up(pool, longest)
            result = await drive(pool, policy, groups)
            result.warm_up = measured
            await pool.shutdown()
            return result
        return asyncio.run(main())
    finally:
        pool.close()

