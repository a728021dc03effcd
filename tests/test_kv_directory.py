"""The cache directory against real publishers: events from a real engine (in this process and in
an engine core process) over ZeroMQ, replay for a late or lossy subscriber, key-scheme refusal,
Redis blocks shared, and a SIGKILLed worker's entries dropped when its lease lapses."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from redis_server import redis_server
from tiny_engine import BLOCK, BLOCK_BYTES, prompt

from aruntime.engine.config import EngineConfig
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.mp_client import MPClient
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.block_format import KeySchemeMismatchError
from aruntime.kv.config import KVConfig
from aruntime.kv.directory import SHARED_WORKER, CacheDirectory, DirectoryClient, PrefixMatch
from aruntime.kv.events import BlockRemoved, BlockStored, KVEventBatch
from aruntime.kv.keys import BlockKey, KeyScheme, prefix_keys
from aruntime.kv.publisher import ZmqPublisher

T = TypeVar("T")
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
LOCAL = "tcp://127.0.0.1:*"



PROMPT = prompt(41, 1)  # 10 full blocks


def engine(model: Path, blocks: int = 64, **kv: object) -> LLMEngine:
    """An engine collecting KV events; `kv` are more of KVConfig's fields."""
    return LLMEngine(EngineConfig(model=str(model), device="cpu", block_size=BLOCK,
                                  kv_cache_bytes=blocks * BLOCK_BYTES,
                                  kv=KVConfig(events=True, **kv)))  # type: ignore[arg-type]


def publisher(eng: LLMEngine, worker_id: str, **kw: object) -> ZmqPublisher:
    return ZmqPublisher(LOCAL, worker_id=worker_id, scheme=eng.key_scheme, replay_endpoint=LOCAL,
                        drain=lambda: eng.drain_kv_events(worker_id), **kw)  # type: ignore[arg-type]


def wait_for(probe: Callable[[], T | None], timeout: float = 5.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)  # a polling interval, not a synchronisation


def match_of(directory: CacheDirectory, keys: list[BlockKey], worker: str) -> PrefixMatch | None:
    return next((m for m in directory.longest_prefix(keys) if m.worker_id == worker), None)


def served(directory: CacheDirectory, keys: list[BlockKey], worker: str, tier: str,
           blocks: int) -> Callable[[], PrefixMatch | None]:
    def probe() -> PrefixMatch | None:
        m = match_of(directory, keys, worker)
        return m if m is not None and (m.tier, m.num_blocks) == (tier, blocks) else None
    return probe


def prompt_keys(eng: LLMEngine, tokens: list[int] = PROMPT, salt: bytes = b"") -> list[BlockKey]:
    return prefix_keys(eng.key_scheme.root(salt), tokens, BLOCK)


def settle(eng: LLMEngine, pub: ZmqPublisher) -> None:
    """Let the tier writer finish, then have the publisher drain what the engine collected."""
    assert eng.tiers is not None
    eng.tiers.flush()
    pub.on_step()


@pytest.fixture
def sockdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="kvdir-")  # short: ipc paths are limited to ~100 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def evict_device(eng: LLMEngine) -> None:
    """Run unrelated prompts until none of PROMPT's blocks is left in the device cache."""
    one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    for seed in range(100, 110):
        keys = prompt_keys(eng)
        if not any(eng.pool.lookup(keys[i:i + 1], PROMPT[i * BLOCK:], BLOCK)
                   for i in range(len(keys))):
            return
        eng.generate([prompt(60, seed)], one)
    raise AssertionError("PROMPT's blocks are still on the device")


def test_engine_events_reach_the_directory_and_follow_the_tier(tiny_model_dir: Path) -> None:
    eng = engine(tiny_model_dir, blocks=32, host_bytes=1 << 20)
    pub = publisher(eng, "w1")
    keys = prompt_keys(eng)
    with CacheDirectory([(pub.endpoint, pub.replay_endpoint)], query_endpoint=LOCAL) as directory:
        eng.generate([PROMPT], GREEDY)
        settle(eng, pub)
        found = wait_for(served(directory, keys, "w1", "device", 10), what="device blocks")
        assert found.by_tier == {"device": 10}
        foreign = [*keys[:6], BlockKey(b"\x00" * 32), *keys[6:]]  # a prefix stops at a miss
        assert match_of(directory, foreign, "w1") == PrefixMatch("w1", "device", 6, {"device": 6})
        assert directory.longest_prefix(prompt_keys(eng, salt=b"other tenant")) == []
        with DirectoryClient(directory.query_endpoint or "") as client:
            assert client.longest_prefix(keys, timeout_s=5.0) == directory.longest_prefix(keys)

        evict_device(eng)
        settle(eng, pub)
        wait_for(served(directory, keys, "w1", "host", 10), what="the host tier")

        pub.shutdown()  # the farewell: a worker that leaves takes its blocks along at once
        wait_for(lambda: match_of(directory, keys, "w1") is None, what="the farewell")


def test_a_late_directory_catches_up_through_replay(tiny_model_dir: Path) -> None:
    eng = engine(tiny_model_dir)
    pub = publisher(eng, "early")
    try:
        eng.generate([PROMPT], GREEDY)
        pub.on_step()
        wait_for(lambda: pub.seq >= 0, what="the batch to be published")
        with CacheDirectory([(pub.endpoint, pub.replay_endpoint)]) as directory:
            wait_for(served(directory, prompt_keys(eng), "early", "device", 10), what="replay")
            assert directory.replays >= 1
    finally:
        pub.shutdown()


def test_a_killed_worker_loses_its_entries_within_the_lease(tiny_model_dir: Path,
                                                            sockdir: str) -> None:
    lease = 1.0
    pub_addr, replay_addr = f"ipc://{sockdir}/events", f"ipc://{sockdir}/replay"
    config = EngineConfig(model=str(tiny_model_dir), device="cpu", block_size=BLOCK,
                          kv_cache_bytes=64 * BLOCK_BYTES, worker_id="doomed",
                          kv=KVConfig(events_endpoint=pub_addr,
                                      events_replay_endpoint=replay_addr, lease_s=lease))
    with CacheDirectory([(pub_addr, replay_addr)]) as directory:
        client = MPClient(config)
        try:
            info = client.start()
            asyncio.run(_run_prompt(client))
            keys = prefix_keys(KeyScheme(BLOCK, info.revision).root(), PROMPT, BLOCK)
            wait_for(served(directory, keys, "doomed", "device", 10), what="the core's blocks")
            assert client.core_pid is not None
            os.kill(client.core_pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: match_of(directory, keys, "doomed") is None, timeout=lease + 2.0,
                     what="the lease to lapse")
            assert time.monotonic() - killed <= lease + 0.5
            assert "doomed" not in directory.workers()
        finally:
            client.close()


async def _run_prompt(client: MPClient) -> None:
    async for _ in client.generate("r1", PROMPT, GREEDY):
        pass


def test_a_worker_with_another_key_scheme_is_refused_loudly(
        tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    four = engine(tiny_model_dir)
    eight = LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cpu", block_size=8,
                                   kv_cache_bytes=32 * 2 * BLOCK_BYTES,
                                   kv=KVConfig(events=True)))
    pubs = [publisher(four, "bs4"), publisher(eight, "bs8")]
    try:
        with CacheDirectory([(pubs[0].endpoint, pubs[0].replay_endpoint)]) as directory:
            wait_for(lambda: "bs4" in directory.workers(), what="the first worker")
            directory.add_publisher(pubs[1].endpoint, pubs[1].replay_endpoint)
            refusal = wait_for(lambda: directory.refused.get("bs8"), what="the refusal")
            assert isinstance(refusal, KeySchemeMismatchError)
            assert "'block_size': 8" in str(refusal) and "'block_size': 4" in str(refusal)
            assert any(r.levelno == logging.ERROR and "bs8" in r.getMessage()
                       for r in caplog.records)
            assert directory.workers() == ["bs4"]
            with pytest.raises(KeySchemeMismatchError):
                directory.index.register("bs8", eight.key_scheme, 1.0, time.monotonic())
    finally:
        for pub in pubs:
            pub.shutdown()


@pytest.mark.parametrize("ring", [10_000, 50])
def test_a_gap_in_sequence_numbers_triggers_a_replay(sockdir: str, ring: int) -> None:
    """A directory that stalls while its publisher's high-water mark is tiny misses batches (the
    PUB socket drops them); the next batch or heartbeat shows the gap and a replay fills it. When
    the ring has moved on, the worker's blocks are forgotten rather than guessed."""
    scheme = KeyScheme(BLOCK, "sha256:" + "1" * 64)
    batches = [prefix_keys(scheme.root(), prompt(500 * BLOCK, i), BLOCK) for i in range(200)]
    pub = ZmqPublisher(f"ipc://{sockdir}/events", worker_id="gappy", scheme=scheme, lease_s=3.0,
                       replay_endpoint=f"ipc://{sockdir}/replay", buffer_size=ring, sndhwm=1)
    try:
        with CacheDirectory([(pub.endpoint, pub.replay_endpoint)], rcvhwm=1) as directory:
            wait_for(lambda: "gappy" in directory.workers(), what="registration")
            replays = directory.replays
            with directory.index.lock:  # the directory stalls; ~3 MB cannot all be buffered
                for keys in batches:
                    pub.publish(KVEventBatch(time.time(), "gappy",
                                             [BlockStored(list(keys), None, [], BLOCK, "host")]))
                pub.publish(KVEventBatch(time.time(), "gappy",
                                         [BlockRemoved([batches[-1][-1]], "host")]))
                wait_for(lambda: pub.seq == len(batches), what="the publisher to send all")
            kept = batches if ring >= len(batches) else batches[len(batches) + 1 - ring:]
            expected = [keys[:-1] if keys is batches[-1] else keys for keys in kept]

            def caught_up() -> bool:
                return all(match_of(directory, keys, "gappy") == PrefixMatch(
                    "gappy", "host", len(keys), {"host": len(keys)}) for keys in expected)

            wait_for(caught_up, what="the replay")
            assert directory.replays > replays
            forgotten = batches[: len(batches) - len(kept)]
            assert all(match_of(directory, keys, "gappy") is None for keys in forgotten)
    finally:
        pub.shutdown()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def test_redis_blocks_belong_to_every_worker(tiny_model_dir: Path, redis_url: str) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    eng = engine(tiny_model_dir, redis_url=redis_url)
    pub = publisher(eng, "writer")
    keys = prompt_keys(eng)
    with CacheDirectory([(pub.endpoint, pub.replay_endpoint)]) as directory:
        eng.generate([PROMPT], GREEDY)
        settle(eng, pub)
        wait_for(served(directory, keys, SHARED_WORKER, "redis", 10), what="redis blocks")
        assert served(directory, keys, "writer", "device", 10)()
        pub.shutdown()  # the writer leaves; what it put in Redis stays usable by anyone
        wait_for(lambda: match_of(directory, keys, "writer") is None, what="the farewell")
        assert served(directory, keys, SHARED_WORKER, "redis", 10)()
