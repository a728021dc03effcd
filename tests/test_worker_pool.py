"""The colocated worker pool with real engine core processes: routing follows the cached prefix,
round-robin spreads, a SIGKILLed worker's requests are retried or fail clearly (never hang),
and the routing audit matches what the engines reused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tiny_engine import config, kill_at_first_token, metrics_of, prompt

from aruntime.cluster.pool import WorkerPool
from aruntime.engine.outputs import RequestOutput
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.keys import request_keys
from aruntime.serve.launch import background_server

DEADLINE = 60.0




@pytest.fixture
def pool_factory(tiny_model_dir: Path) -> Iterator[Callable[[int, str], WorkerPool]]:
    pools: list[WorkerPool] = []

    def make(n: int, policy: str) -> WorkerPool:
        pool = WorkerPool(config(tiny_model_dir), n, policy, seed=0)
        pools.append(pool)
        pool.start()
        return pool

    yield make
    for pool in pools:
        pool.close()


async def run(pool: WorkerPool, rid: str, tokens: list[int],
              max_tokens: int = 4) -> list[RequestOutput]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return [out async for out in pool.generate(rid, tokens, params)]


async def until(probe: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # a polling interval, not a synchronisation


def published(pool: WorkerPool, tokens: list[int], blocks: int,
              worker: str | None = None) -> Callable[[], bool]:
    """The directory shows `blocks` leading blocks of `tokens` on `worker` (any if None)."""
    assert pool.directory is not None
    keys = request_keys(next(iter(pool.registry.values())).scheme, tokens)

    def probe() -> bool:
        assert pool.directory is not None
        return any(m.num_blocks >= blocks and worker in (None, m.worker_id)
                   for m in pool.directory.longest_prefix(keys))
    return probe


def within(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, DEADLINE))  # type: ignore[arg-type]


def test_workers_register_and_kv_routing_follows_the_cached_prefix(
        pool_factory: Callable[[int, str], WorkerPool]) -> None:
    pool = pool_factory(3, "kv")
    assert sorted(pool.registry) == ["w0", "w1", "w2"]
    assert {w.role for w in pool.registry.values()} == {"colocated"}
    assert all(w.num_blocks > 0 and w.pid for w in pool.registry.values())
    base = prompt(40, 1)

    async def main() -> None:
        await run(pool, "cold", base)
        first = pool.route_of("cold")
        assert first is not None and first.predicted_cached_tokens == 0
        await until(published(pool, base, 10, first.worker), "the prompt's blocks")
        for i in range(4):
            await run(pool, f"warm-{i}", base + prompt(8, 100 + i))
            route = pool.route_of(f"warm-{i}")
            assert route is not None and route.worker == first.worker
            assert route.predicted_cached_tokens == route.cached_tokens_used == 40

    within(main())
    assert pool.audit.requests == 5 and pool.audit.error == 0.0
    assert "aruntime:route_cached_tokens_used_total" in metrics_of(pool)


def test_round_robin_spreads_and_misses(pool_factory: Callable[[int, str], WorkerPool]) -> None:
    pool = pool_factory(2, "round-robin")
    base = prompt(40, 2)

    async def main() -> None:
        for i in range(4):
            await run(pool, f"rr-{i}", base + prompt(8, 200 + i))
            worker = pool.route_of(f"rr-{i}").worker  # type: ignore[union-attr]
            await until(published(pool, base, 10, worker), "the prompt's blocks")

    within(main())
    workers = [r.worker for r in (pool.route_of(f"rr-{i}") for i in range(4)) if r]
    assert workers == ["w0", "w1", "w0", "w1"]
    assert pool.audit.requests == 4
    assert pool.audit.predicted_tokens == pool.audit.used_tokens


def test_a_request_sent_to_a_killed_worker_is_retried_elsewhere(
        pool_factory: Callable[[int, str], WorkerPool]) -> None:
    pool = pool_factory(2, "round-robin")

    async def main() -> None:
        await asyncio.gather(run(pool, "a", prompt(12, 3)), run(pool, "b", prompt(12, 4)))
        victim = pool.workers["w0"]
        assert victim.core_pid is not None
        os.kill(victim.core_pid, signal.SIGKILL)  # the loop has not seen it die yet
        outs = await run(pool, "retried", prompt(12, 5))
        assert outs[-1].finished and outs[-1].finish_reason == "length"
        route = pool.route_of("retried")
        assert route is not None and route.worker == "w1" and route.attempts == 2
        await until(lambda: pool.live_workers() == ["w1"], "w0 to be seen dead")
        outs = await run(pool, "after", prompt(12, 6))
        assert outs[-1].finished

    within(main())
    assert pool.audit.retries == 1


def test_killing_a_worker_mid_stream_fails_that_request_clearly_and_no_other(
        pool_factory: Callable[[int, str], WorkerPool]) -> None:
    pool = pool_factory(2, "round-robin")
    def kill() -> None:
        route = pool.route_of("doomed")
        assert route is not None
        pid = pool.workers[route.worker].core_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def doomed() -> Awaitable[str]:
        return kill_at_first_token(pool, "doomed", prompt(12, 7), kill)

    async def main() -> None:
        # round-robin: doomed goes to w0, the concurrent one to w1
        result, other = await asyncio.gather(doomed(), run(pool, "other", prompt(12, 10), 6))
        assert result == "completed" or ("died while request doomed was streaming" in result)
        assert result != "completed", "the kill landed after 490 tokens: not exercised"
        assert other[-1].finished
        for i in range(2):  # later requests go to the survivor
            assert (await run(pool, f"later-{i}", prompt(12, 20 + i)))[-1].finished

    within(main())
    assert pool.audit.failed_mid_stream == 1


def test_http_stream_from_a_killed_worker_ends_with_an_error_chunk(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    with background_server(config(tiny_model_dir), tmp_path, workers=2,
                           router_policy="round-robin") as server:
        pool = server.engine
        assert isinstance(pool, WorkerPool)
        body = {"model": "tiny", "prompt": "hello there", "max_tokens": 500, "stream": True,
                "ignore_eos": True, "temperature": 0}
        with httpx.Client(base_url=server.url, timeout=DEADLINE) as http:
            model = http.get("/v1/models").json()["data"][0]["id"]
            body["model"] = model
            lines: list[str] = []
            with http.stream("POST", "/v1/completions", json=body) as resp:
                assert resp.status_code == 200, resp.read()
                for line in resp.iter_lines():
                    if line.startswith("data: ") and len(lines) == 0:
                        worker = next(iter(pool._routes.values())).worker
                        pid = pool.workers[worker].core_pid
                        assert pid is not None
                        os.kill(pid, signal.SIGKILL)
                    if line:
                        lines.append(line)
            assert lines[-1] == "data: [DONE]"
            assert '"engine_unavailable"' in lines[-2] or "error" in lines[-2]
            later = {**body, "stream": False, "max_tokens": 4,
                     "prompt": "the same long prompt is sent twice " * 4}
            ok = http.post("/v1/completions", json=later)
            assert ok.status_code == 200
            again = http.post("/v1/completions", json=later)  # the survivor holds it now
            assert again.status_code == 200
            assert again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
            records = [json.loads(line) for line in
                       (tmp_path / "evidence.jsonl").read_text().splitlines()]
            assert records[0]["finish_reasons"] == ["abort"]  # the killed stream, on record
            route = records[-1]["route"]
            assert route["worker"] in ("w0", "w1")
            assert route["cached_tokens_used"] > 0
            assert route["cached_tokens_predicted"] is not None  # its accuracy: tests above
            metrics = http.get("/metrics").text
            assert 'aruntime:worker_up{role="colocated",worker="' in metrics
            assert "aruntime:route_failed_mid_stream_total" in metrics


def test_merged_stats_keep_one_entry_a_tier() -> None:
    from aruntime.cluster.pool import merge_stats
    from aruntime.engine.outputs import EngineStats, TierStats

    def engine(hits: int, usage: float) -> EngineStats:
        tier = TierStats("transport", hits, 1, 0, 0, 100, 0.5, [hits, 1], restore_bytes=10)
        return EngineStats(1, 0, 0, usage, 8, 4, 10, 5, 10, 3, tiers=[tier])

    merged = merge_stats([engine(2, 0.2), engine(3, 0.6)])
    assert [t.tier for t in merged.tiers] == ["transport"]  # one /metrics series, not two
    t = merged.tiers[0]
    assert (t.hits, t.misses, t.stored_bytes, t.load_buckets, t.restore_bytes) == (
        5, 2, 200, [5, 2], 20)
    assert merged.num_running == 2 and merged.kv_usage == pytest.approx(0.4)
