"""`aruntime serve --ray` on a real local Ray cluster (one for the module): workers are Ray
actors placed by role, the KV goes from prefill to decode through Ray's object store, greedy
outputs equal a single engine's (tensor-parallel groups of actors too), routing reuses a
worker's prefix, and a decode actor killed mid-stream fails its request clearly while the
other one serves the next."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import ray
from tiny_engine import BLOCK, BLOCK_BYTES, config, kill_at_first_token, metrics_of, prompt

from aruntime.cli import main as cli_main
from aruntime.cluster.ray.pool import RayDisaggregatedPool, RayPool
from aruntime.engine.client import EngineClient
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.config import KVConfig
from aruntime.kv.keys import CacheScope

DEADLINE = 60.0
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
LENGTHS = (3, 12, 17, 29, 40)  # one under a block, several over many blocks


def within(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))  # type: ignore[arg-type]


async def tokens(client: EngineClient, rid: str, ids: list[int],
                 params: SamplingParams = GREEDY) -> list[int]:
    return [t async for out in client.generate(rid, ids, params) for t in out.new_token_ids]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A fresh local cluster whose node offers one prefill and two decode slots."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024 * 1024,
             resources={"aruntime_prefill": 1, "aruntime_decode": 2})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return [prompt(n, seed) for seed, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def expected(tiny_model_dir: Path, prompts: list[list[int]]) -> list[list[int]]:
    engine = LLMEngine(config(tiny_model_dir))
    return [out.new_token_ids for out in engine.generate(prompts, GREEDY)]


P = TypeVar("P", RayPool, RayDisaggregatedPool)


def _started(pool: P) -> Iterator[P]:
    try:
        pool.start()
        yield pool
        within(pool.shutdown())
    finally:
        pool.close()


@pytest.fixture(scope="module")
def disagg(cluster: None, tiny_model_dir: Path) -> Iterator[RayDisaggregatedPool]:
    yield from _started(RayDisaggregatedPool(config(tiny_model_dir), 1, 2))


@pytest.fixture(scope="module")
def colocated(cluster: None, tiny_model_dir: Path) -> Iterator[RayPool]:
    yield from _started(RayPool(config(tiny_model_dir), 2, "kv"))


def test_an_exported_prefix_is_reused_by_another_engine_and_a_foreign_one_is_refused(
        tiny_model_dir: Path) -> None:
    ids = prompt(17, 3)
    blocks = (len(ids) - 1) // BLOCK
    staged = dataclasses.replace(config(tiny_model_dir), kv=KVConfig(staged=True))
    first, second = LLMEngine(staged), LLMEngine(staged)  # KV handed over out of band
    first.generate([ids], SamplingParams(max_tokens=1, temperature=0.0))
    blobs = first.export_prefix(ids)
    assert len(blobs) == blocks
    assert second.import_prefix(ids, blobs, CacheScope(b"other tenant")) == 0  # other keys
    assert second.import_prefix(ids, blobs) == blocks
    assert second.import_prefix(ids, blobs) == blocks  # already held: kept, not copied
    out = second.generate([ids], GREEDY)[0]
    assert out.num_cached_tokens == blocks * BLOCK
    assert out.new_token_ids == first.generate([ids], GREEDY)[0].new_token_ids


def test_parallel_groups_of_ray_actors_hand_whole_blocks_and_equal_one_engine(
        cluster: None, tiny_model_dir: Path, prompts: list[list[int]],
        expected: list[list[int]]) -> None:
    """--ray, disaggregated, --tensor-parallel 2: each worker's second rank is a Ray actor,
    and the prefill group's whole blocks restore into the decode group's shards."""
    tp2 = dataclasses.replace(config(tiny_model_dir), tensor_parallel=2)
    for pool in _started(RayDisaggregatedPool(tp2, 1, 1)):
        async def main(group: RayDisaggregatedPool) -> None:
            for i, ids in enumerate(prompts):
                assert await tokens(group, f"tp{i}", ids) == expected[i], f"prompt {i}"

        within(main(pool))
        assert pool.handoffs.blocks == sum((len(ids) - 1) // BLOCK for ids in prompts)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        assert sum(n.startswith("aruntime-rank1-of-") for n in names) == 2, names


def test_disaggregated_actors_hand_kv_through_the_object_store_and_equal_one_engine(
        disagg: RayDisaggregatedPool, prompts: list[list[int]],
        expected: list[list[int]]) -> None:
    # placed by role: each actor holds a unit of its role's resource, and no CPU
    placed = {w: c.placed_with for w, c in disagg.workers.items()}  # type: ignore[attr-defined]
    assert placed == {"p0": {"aruntime_prefill": 1.0}, "d0": {"aruntime_decode": 1.0},
                      "d1": {"aruntime_decode": 1.0}}
    assert ray.get_actor("aruntime-p0") is not None and ray.get_actor("aruntime-d1") is not None

    async def main() -> float:
        for i, ids in enumerate(prompts):
            assert await tokens(disagg, f"d{i}", ids) == expected[i], f"prompt {i}"
            hand = disagg.handoff_of(f"d{i}")
            blocks = (len(ids) - 1) // BLOCK
            assert hand is not None and hand.prefill_worker == ("p0" if blocks else None)
            # the decode worker reused exactly the blocks the object store brought it
            assert hand.decode_cached_tokens == hand.expected_transport_tokens == blocks * BLOCK
        return await disagg.transport_bandwidth()

    bandwidth = within(main())
    handed = sum((len(ids) - 1) // BLOCK for ids in prompts)
    assert disagg.handoffs.blocks == handed
    assert disagg.audit.restored_bytes == disagg.handoffs.nbytes >= handed * BLOCK_BYTES
    assert bandwidth > 0 and disagg.audit.handoffs == 4 and disagg.audit.prefill_skipped == 1
    print(f"\nRay KV handoff: {handed} blocks, {disagg.handoffs.nbytes} bytes in "
          f"{disagg.handoffs.seconds * 1e3:.1f} ms (export, put, get, import): "
          f"{bandwidth / 1e6:.1f} MB/s")
    text = metrics_of(disagg)
    assert 'aruntime:worker_up{role="decode",worker="d0"} 1.0' in text
    assert 'aruntime:worker_up{role="prefill",worker="p0"} 1.0' in text
    assert "aruntime:kv_transport_bandwidth_bytes_per_second" in text


def test_colocated_actors_equal_one_engine_and_route_a_repeat_to_its_prefix(
        colocated: RayPool, prompts: list[list[int]], expected: list[list[int]]) -> None:
    async def main() -> None:
        for i, ids in enumerate(prompts):
            assert await tokens(colocated, f"c{i}", ids) == expected[i], f"prompt {i}"
        first = [colocated.route_of(f"c{i}") for i in range(len(prompts))]
        assert {r.worker for r in first if r is not None} == {"w0", "w1"}  # cold ones spread
        for i in (2, 4):  # again: the worker holding the prefix, which it reuses
            assert await tokens(colocated, f"again{i}", prompts[i]) == expected[i]
            route, before = colocated.route_of(f"again{i}"), first[i]
            blocks = (len(prompts[i]) - 1) // BLOCK
            assert route is not None and before is not None and route.worker == before.worker
            assert route.predicted_cached_tokens == route.cached_tokens_used == blocks * BLOCK

    within(main())
    assert colocated.audit.abs_error_tokens == 0
    # no aruntime_colocated resource in this cluster: placed anywhere, holding nothing
    assert all(not w.placed_with for w in colocated.workers.values())  # type: ignore[attr-defined]
    assert 'aruntime:worker_up{role="colocated",worker="w1"} 1.0' in metrics_of(colocated)


def test_closing_a_stream_early_aborts_it_on_its_actor(colocated: RayPool) -> None:
    params = SamplingParams(max_tokens=490, temperature=0.0, ignore_eos=True)

    async def main() -> None:
        before = {w: (await c.stats()).generation_tokens_total
                  for w, c in colocated.workers.items()}
        stream = colocated.generate("closed", prompt(12, 9), params)
        async for out in stream:
            if out.new_token_ids:
                break
        await stream.aclose()
        route = colocated.route_of("closed")
        assert route is not None
        worker = colocated.workers[route.worker]
        while (stats := await worker.stats()).num_running:  # polled until the abort lands
            await asyncio.sleep(0)
        assert stats.generation_tokens_total - before[route.worker] < params.max_tokens

    within(main())


def test_http_completion_through_ray_actors(disagg: RayDisaggregatedPool, tiny_model_dir: Path,
                                            tmp_path: Path) -> None:
    from aruntime.engine.tokenizer import Tokenizer
    from aruntime.serve.app import build_app
    from aruntime.serve.launch import BackgroundServer

    app = build_app(disagg, Tokenizer.from_dir(tiny_model_dir), "tiny",
                    model_info=disagg.model_info, data_dir=tmp_path)
    handoffs = disagg.audit.handoffs
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url,
                                                       timeout=DEADLINE) as http:
        body = {"model": "tiny", "prompt": "hello there, how are you doing today my friend?",
                "max_tokens": 6, "ignore_eos": True, "temperature": 0}
        resp = http.post("/v1/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 6
        assert disagg.audit.handoffs == handoffs + 1
        assert "aruntime:kv_transport_restored_bytes_total" in http.get("/metrics").text


def test_killing_a_decode_actor_mid_stream_fails_clearly_and_the_other_takes_over(
        disagg: RayDisaggregatedPool) -> None:
    victims: list[str] = []

    def kill() -> None:
        route = disagg.decode.route_of("doomed")
        assert route is not None
        victims.append(route.worker)
        ray.kill(ray.get_actor(f"aruntime-{route.worker}"), no_restart=True)

    async def doomed() -> tuple[str, str]:
        result = await kill_at_first_token(disagg, "doomed", prompt(12, 7), kill)
        return victims[0] if victims else "", result

    async def main() -> None:
        victim, result = await doomed()
        assert result != "completed", "the kill landed after 490 tokens: not exercised"
        assert "died while request doomed was streaming" in result and victim in result
        assert await tokens(disagg, "after", prompt(12, 8)) != []
        after = disagg.decode.route_of("after")
        assert after is not None and after.worker != victim

    within(main())
    victim = victims[0]
    assert disagg.is_alive and disagg.decode.audit.failed_mid_stream == 1
    assert f'aruntime:worker_up{{role="decode",worker="{victim}"}} 0.0' in metrics_of(disagg)


def test_serve_with_an_unreachable_or_malformed_ray_address_is_one_line_exit_2(
        tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["serve", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path)]
    for address, message in (("127.0.0.1:1", "cannot reach a Ray cluster there"),
                             ("nowhere", "expected auto, HOST:PORT")):
        assert cli_main([*base, "--ray", address]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert cli_main([*base, "--ray", "auto"]) == 2
    assert "pip install 'aruntime[ray]'" in capsys.readouterr().err


def test_workers_that_cannot_be_placed_or_started_fail_at_once(
        cluster: None, colocated: RayPool, tiny_model_dir: Path) -> None:
    from aruntime.cluster.ray.cluster import RayUnavailableError
    from aruntime.engine.core_client import EngineStartError

    with pytest.raises(RayUnavailableError, match="3 decode workers need 3 aruntime_decode"):
        RayPool(config(tiny_model_dir), 3, role="decode")
    cuda = dataclasses.replace(config(tiny_model_dir), device="cuda")
    with pytest.raises(RayUnavailableError, match="need 1 GPU"):
        RayPool(cuda, 1)
    with pytest.raises(EngineStartError, match=r"aruntime-w0 cannot be created: .*taken"):
        RayPool(config(tiny_model_dir), 1).start()  # colocated's w0 has the name
    missing = dataclasses.replace(config(tiny_model_dir), model=str(tiny_model_dir / "gone"))
    with pytest.raises(EngineStartError, match=r"aruntime-bad0 failed to start: .*does not exist"):
        RayPool(missing, 1, worker_prefix="bad").start()
