"""The engine clients against a real engine: the core in a spawned process over ZeroMQ
(MPClient) and on a thread (InprocClient)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from aruntime.engine.client import EngineDeadError
from aruntime.engine.config import EngineConfig
from aruntime.engine.core_client import EngineStartError, InprocClient
from aruntime.engine.mp_client import MPClient
from aruntime.engine.outputs import RequestOutput
from aruntime.engine.sampling import SamplingParams

T = TypeVar("T")
KV_BYTES = 2 * 1024 * 1024
PROMPT = [5, 6, 7, 8, 9, 10, 11, 12]


@pytest.fixture(scope="module")
def config(tiny_model_dir: Path) -> EngineConfig:
    return EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=KV_BYTES)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def mp(config: EngineConfig, loop: asyncio.AbstractEventLoop) -> Iterator[MPClient]:
    client = MPClient(config)
    client.start()
    yield client
    loop.run_until_complete(asyncio.wait_for(client.shutdown(), 30))


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def collect(client: Any, rid: str, prompt: list[int],
                  params: SamplingParams) -> list[RequestOutput]:
    return [out async for out in client.generate(rid, prompt, params)]


async def settled(client: Any, timeout: float = 10.0) -> Any:
    """Poll stats until nothing runs or waits and every block is free again."""
    deadline = time.monotonic() + timeout
    while True:
        s = await client.stats()
        if s.num_running == 0 and s.num_waiting == 0 and s.num_free_blocks == s.num_blocks:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"engine did not settle: {s}")
        await asyncio.sleep(0.02)


GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


def test_model_info(mp: MPClient, tiny_model_dir: Path) -> None:
    info = mp.model_info
    assert info.revision.startswith("sha256:")
    assert info.name == tiny_model_dir.name
    assert info.max_model_len > len(PROMPT)
    assert info.vocab_size == 2048 and info.num_blocks > 0
    assert mp.core_pid is not None and mp.core_pid != os.getpid()


def test_generate_streams_deltas_until_finished(mp: MPClient, loop: Any) -> None:
    outs = run(loop, collect(mp, "g1", PROMPT, GREEDY))
    assert [len(o.new_token_ids) for o in outs] == [1] * 6
    assert [o.finished for o in outs] == [False] * 5 + [True]
    assert outs[-1].finish_reason == "length"
    assert outs[-1].num_prompt_tokens == len(PROMPT)
    assert outs[-1].first_token_time is not None and outs[-1].finish_time is not None


def test_inproc_and_mp_agree(mp: MPClient, loop: Any, config: EngineConfig) -> None:
    """Same engine, two transports: the same greedy tokens."""
    inproc = InprocClient(config)
    inproc.start()
    assert inproc.model_info.revision == mp.model_info.revision

    async def via_inproc() -> list[RequestOutput]:
        try:
            return await collect(inproc, "same", PROMPT, GREEDY)
        finally:
            await inproc.shutdown()

    own_loop = asyncio.new_event_loop()  # mp is bound to the module's loop, inproc to this one
    try:
        a = run(own_loop, via_inproc())
    finally:
        own_loop.close()
    b = run(loop, collect(mp, "same", PROMPT, GREEDY))
    assert [o.new_token_ids for o in a] == [o.new_token_ids for o in b]
    assert "".join(o.new_text for o in a) == "".join(o.new_text for o in b)


def test_close_early_aborts_and_frees_blocks(mp: MPClient, loop: Any) -> None:
    async def go() -> Any:
        long = SamplingParams(max_tokens=500, ignore_eos=True)
        stream = mp.generate("early", PROMPT * 4, long)
        async for out in stream:
            assert not out.finished
            break
        running = await mp.stats()
        assert running.num_running + running.num_waiting == 1
        assert running.num_free_blocks < running.num_blocks
        await stream.aclose()  # what a disconnecting HTTP client does
        return await settled(mp)

    assert run(loop, go()).kv_usage == 0.0


def test_cancelled_consumer_aborts(mp: MPClient, loop: Any) -> None:
    async def go() -> None:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in mp.generate("cancel-me", PROMPT, SamplingParams(max_tokens=500,
                                                                          ignore_eos=True)):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settled(mp)

    run(loop, go())


def test_explicit_abort_finishes_with_abort(mp: MPClient, loop: Any) -> None:
    async def go() -> RequestOutput:
        last = None
        async for out in mp.generate("ab", PROMPT, SamplingParams(max_tokens=500,
                                                                  ignore_eos=True)):
            last = out
            if not out.finished:
                await mp.abort("ab")
        assert last is not None
        await settled(mp)
        return last

    last = run(loop, go())
    assert last.finished and last.finish_reason == "abort"


def test_stats_count_tokens(mp: MPClient, loop: Any) -> None:
    async def go() -> tuple[Any, Any]:
        before = await mp.stats()
        await collect(mp, "count", PROMPT, GREEDY)
        return before, await mp.stats()

    before, after = run(loop, go())
    assert after.prompt_tokens_total - before.prompt_tokens_total == len(PROMPT)
    assert after.generation_tokens_total - before.generation_tokens_total == 6
    assert after.num_running == 0 and after.num_waiting == 0


def test_concurrent_requests_route_to_their_own_streams(mp: MPClient, loop: Any) -> None:
    async def go() -> list[list[RequestOutput]]:
        return await asyncio.gather(*(
            collect(mp, f"c{i}", PROMPT[: 2 + i], SamplingParams(max_tokens=3 + i,
                                                                  ignore_eos=True, seed=i))
            for i in range(6)))

    results = run(loop, go())
    for i, outs in enumerate(results):
        assert {o.request_id for o in outs} == {f"c{i}"}
        assert sum(len(o.new_token_ids) for o in outs) == 3 + i
        assert outs[-1].finished


def test_engine_refusals_raise_value_error(mp: MPClient, loop: Any) -> None:
    too_long = [5] * mp.model_info.max_model_len
    with pytest.raises(ValueError, match="context"):
        run(loop, collect(mp, "long", too_long, GREEDY))
    with pytest.raises(ValueError, match="empty"):
        run(loop, collect(mp, "empty", [], GREEDY))

    async def duplicate() -> None:
        first = mp.generate("dup", PROMPT, SamplingParams(max_tokens=50, ignore_eos=True))
        await first.__anext__()
        try:
            await collect(mp, "dup", PROMPT, GREEDY)
        finally:
            await first.aclose()

    with pytest.raises(ValueError, match="already"):
        run(loop, duplicate())
    run(loop, settled(mp))


def test_core_death_fails_pending_requests(config: EngineConfig) -> None:
    client = MPClient(config)
    client.start()
    pid = client.core_pid
    assert pid is not None

    async def go() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in client.generate("doomed", PROMPT, SamplingParams(
                    max_tokens=4000, ignore_eos=True)):
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 10)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError, match="exited"):
            await asyncio.wait_for(task, 10)
        with pytest.raises(EngineDeadError):
            await collect(client, "after", PROMPT, GREEDY)
        with pytest.raises(EngineDeadError):
            await client.stats()
        assert not client.is_alive
        await client.shutdown()

    loop = asyncio.new_event_loop()
    try:
        run(loop, go())
    finally:
        loop.close()


def test_start_failure_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    t0 = time.monotonic()
    with pytest.raises(EngineStartError, match="failed to start"):
        MPClient(EngineConfig(model=str(tmp_path)), startup_timeout=60).start()
    assert time.monotonic() - t0 < 60


def test_core_exits_when_its_parent_dies(config: EngineConfig) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from aruntime.engine.config import EngineConfig
        from aruntime.engine.mp_client import MPClient
        if __name__ == "__main__":
            c = MPClient(EngineConfig(model={config.model!r}, kv_cache_bytes={KV_BYTES}))
            c.start()
            print(c.core_pid, c._sockdir, flush=True)
            time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid, sockdir = parent.stdout.readline().split()
        core_pid = int(pid)
        assert psutil.pid_exists(core_pid) and Path(sockdir).is_dir()
    finally:
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 15
    while _running(core_pid):
        assert time.monotonic() < deadline, "the engine core outlived its parent"
        time.sleep(0.05)
    assert not Path(sockdir).exists()  # the dead parent's sockets are cleared away too


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
