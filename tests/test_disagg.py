"""Disaggregated serving with real engine core processes: a prefill worker hands the prompt's KV
to a decode worker through the shared-memory transport; greedy outputs equal a single worker's,
the decode worker restores the prompt from the transport, and a killed decode worker fails its
request clearly; tensor-parallel workers hand over whole blocks the same way."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Awaitable, Iterator
from pathlib import Path

import httpx
import pytest
from tiny_engine import BLOCK, BLOCK_BYTES, config, kill_at_first_token, metrics_of, prompt

from aruntime.cluster.disagg import DisaggregatedPool
from aruntime.engine.client import EngineDeadError
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.mp_client import MPClient
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.keys import CacheScope
from aruntime.kv.shm_store import TRANSPORT_TIER
from aruntime.serve.launch import background_server

DEADLINE = 60.0
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)




def within(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, DEADLINE))  # type: ignore[arg-type]


@pytest.fixture
def disagg(tiny_model_dir: Path) -> Iterator[DisaggregatedPool]:
    pool = DisaggregatedPool(config(tiny_model_dir), 1, 1)
    try:
        pool.start()
        yield pool
    finally:
        pool.close()
    assert not Path(pool.transport_dir).exists()


async def tokens(client: MPClient | DisaggregatedPool, rid: str, ids: list[int],
                 params: SamplingParams = GREEDY) -> list[int]:
    return [t async for out in client.generate(rid, ids, params) for t in out.new_token_ids]


def test_greedy_outputs_equal_a_single_workers_and_come_over_the_transport(
        tiny_model_dir: Path, disagg: DisaggregatedPool) -> None:
    prompts = [prompt(n, seed) for seed, n in enumerate((3, 12, 17, 29, 40))]
    single = MPClient(config(tiny_model_dir))
    single.start()

    async def main() -> None:
        try:
            expected = [await tokens(single, f"s{i}", p) for i, p in enumerate(prompts)]
        finally:
            await single.shutdown()
        for i, p in enumerate(prompts):
            got = await tokens(disagg, f"d{i}", p)
            assert got == expected[i], f"prompt {i} ({len(p)} tokens)"
            hand = disagg.handoff_of(f"d{i}")
            assert hand is not None and hand.decode_worker == "d0"
            blocks = (len(p) - 1) // BLOCK
            assert hand.prefill_worker == ("p0" if blocks else None)
            # the decode worker reused every full prompt block: the prefill worker's, restored
            assert hand.decode_cached_tokens == hand.expected_transport_tokens == blocks * BLOCK
            route = disagg.route_of(f"d{i}")
            assert route is not None and route.cached_tokens_used == blocks * BLOCK
        bandwidth = await disagg.transport_bandwidth()
        assert bandwidth > 0
        stats = await disagg.decode.stats()
        moved = sum(t.restore_bytes for t in stats.tiers if t.tier == TRANSPORT_TIER)
        restored_blocks = sum((len(p) - 1) // BLOCK for p in prompts)
        assert moved == disagg.audit.restored_bytes and moved >= restored_blocks * BLOCK_BYTES
        # admission sees the prefill worker (which holds the prompt now) as the candidate
        candidates = disagg.candidate_loads(prompts[-1])
        assert [load.worker_id for load, _ in candidates] == ["p0"]
        assert candidates[0][1] > 0 and candidates[0][0].running == 0

    within(main())
    audit = disagg.audit
    assert audit.handoffs == 4 and audit.prefill_skipped == 1 and audit.prefill_fallbacks == 0
    assert {w.role for w in disagg.registry.values()} == {"prefill", "decode"}
    text = metrics_of(disagg)
    assert "aruntime:kv_transport_bandwidth_bytes_per_second" in text
    assert 'aruntime:worker_up{role="decode",worker="d0"} 1.0' in text


def test_tensor_parallel_workers_hand_whole_blocks_over_the_transport(
        tiny_model_dir: Path) -> None:
    """Each worker a TP=2 group: the prefill group's whole blocks restore into the decode
    group's shards, and the answers are one engine's."""
    prompts = [prompt(n, seed) for seed, n in enumerate((12, 29))]
    expected = [o.new_token_ids for o in LLMEngine(config(tiny_model_dir)).generate(
        prompts, GREEDY)]
    pool = DisaggregatedPool(dataclasses.replace(config(tiny_model_dir), tensor_parallel=2),
                             1, 1)
    try:
        pool.start()

        async def main() -> None:
            for i, p in enumerate(prompts):
                assert await tokens(pool, f"t{i}", p) == expected[i], f"prompt {i}"
                hand = pool.handoff_of(f"t{i}")
                blocks = (len(p) - 1) // BLOCK
                assert hand is not None and hand.decode_cached_tokens == blocks * BLOCK

        within(main())
    finally:
        pool.close()


def test_a_confidential_prompt_never_crosses_the_transport(
        tiny_model_dir: Path, disagg: DisaggregatedPool) -> None:
    """A device-only scope (a confidential request's) is computed on one decode worker: no
    prefill hand-over, nothing written to the shared-memory transport."""
    secret = prompt(40, 11)
    scope = CacheScope(b"tenant-salt", device_only=True)

    async def main() -> None:
        got = [t async for out in disagg.generate("c0", secret, GREEDY, scope)
               for t in out.new_token_ids]
        clear = await tokens(disagg, "c1", secret)
        assert got == clear  # the same tokens, computed in one place
        hand = disagg.handoff_of("c0")
        assert hand is not None and hand.prefill_worker is None
        assert hand.decode_cached_tokens == 0  # nothing restored from the transport
        stats = await disagg.decode.stats()
        restored = sum(t.restore_bytes for t in stats.tiers if t.tier == TRANSPORT_TIER)
        assert restored == ((len(secret) - 1) // BLOCK) * BLOCK_BYTES  # c1's blocks, not c0's

    within(main())
    assert disagg.audit.kept_on_device == 1 and disagg.audit.handoffs == 1  # c1's only


def test_killing_the_decode_worker_mid_stream_fails_the_request_clearly(
        disagg: DisaggregatedPool) -> None:
    def kill() -> None:
        pid = disagg.decode.workers["d0"].core_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def doomed() -> Awaitable[str]:
        return kill_at_first_token(disagg, "doomed", prompt(12, 7), kill)

    async def main() -> None:
        result = await doomed()
        assert result != "completed", "the kill landed after 490 tokens: not exercised"
        assert "died while request doomed was streaming" in result
        with pytest.raises(EngineDeadError):  # no decode worker left: a clear error, no hang
            await tokens(disagg, "after", prompt(12, 8))

    within(main())
    assert disagg.decode.audit.failed_mid_stream == 1
    assert not disagg.is_alive


def test_http_completion_through_prefill_and_decode_workers(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    with background_server(config(tiny_model_dir), tmp_path, prefill_workers=1,
                           decode_workers=1) as server:
        pool = server.engine
        assert isinstance(pool, DisaggregatedPool)
        with httpx.Client(base_url=server.url, timeout=DEADLINE) as http:
            model = http.get("/v1/models").json()["data"][0]["id"]
            body = {"model": model, "prompt": "hello there, how are you doing today my friend?",
                    "max_tokens": 6, "ignore_eos": True, "temperature": 0}
            resp = http.post("/v1/completions", json=body)
            assert resp.status_code == 200, resp.text
            usage = resp.json()["usage"]
            assert usage["completion_tokens"] == 6
            assert pool.audit.handoffs == 1
            metrics = http.get("/metrics").text
            assert "aruntime:kv_transport_restored_bytes_total" in metrics
            assert pool.audit.restored_bytes > 0


def test_the_transport_store_sees_what_another_opener_wrote(tmp_path: Path) -> None:
    from aruntime.kv.keys import BlockKey, KeyScheme
    from aruntime.kv.shm_store import ShmStore

    scheme = KeyScheme(BLOCK, "rev")
    writer, reader = ShmStore(tmp_path, 64, scheme), ShmStore(tmp_path, 64, scheme)
    keys = [BlockKey(bytes([i]) * 32) for i in range(3)]
    assert writer.put(keys[0], b"a" * 40) == [] and reader.contains(keys[0])
    assert reader.get(keys[0]) == b"a" * 40
    assert reader.put(keys[0], b"a" * 40) == []  # already there: nothing written twice
    assert writer.put(keys[1], b"b" * 40) == [(keys[0], b"a" * 40)]  # over the writer's bound
    assert not reader.contains(keys[0]) and reader.get(keys[0]) is None
    assert writer.used_bytes() == 40 and reader.used_bytes() == 0
