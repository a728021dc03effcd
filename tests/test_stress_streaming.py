"""64 concurrent streaming clients, a seeded random subset of them hanging up mid-stream: the
rest finish with [DONE], nothing hangs, and afterwards the engine holds no request and no
KV block (a disconnect aborts its engine request)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aruntime.engine.config import EngineConfig
from aruntime.serve.launch import BackgroundServer, background_server

CLIENTS = 64
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[BackgroundServer]:
    # A small KV cache (128 blocks of 16 tokens) so that 64 streams also exercise preemption.
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1024 * 1024,
                          max_num_seqs=64, max_model_len=256)
    with background_server(config, tmp_path_factory.mktemp("data"),
                           served_model_name="tiny") as srv:
        yield srv


async def one_stream(http: httpx.AsyncClient, i: int, hang_up_after: int | None
                     ) -> dict[str, Any]:
    chat = i % 2 == 0
    body: dict[str, Any] = {"model": "tiny", "max_tokens": MAX_TOKENS, "ignore_eos": True,
                            "stream": True, "seed": i, "stream_options": {"include_usage": True}}
    if chat:
        body["messages"] = [{"role": "user", "content": f"tell story number {i} " * (1 + i % 5)}]
    else:
        body["prompt"] = f"once upon a time {i} " * (1 + i % 7)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    result: dict[str, Any] = {"done": False, "finish": None, "chunks": 0, "usage": None}
    async with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            if line == "data: [DONE]":
                result["done"] = True
                break
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            result["chunks"] += 1
            if chunk.get("usage"):
                result["usage"] = chunk["usage"]
            for choice in chunk["choices"]:
                result["finish"] = choice["finish_reason"] or result["finish"]
            if hang_up_after is not None and result["chunks"] >= hang_up_after:
                return result  # leaving the block closes the connection mid-stream
    return result


def test_many_streams_with_disconnects(server: BackgroundServer) -> None:
    rng = random.Random(20240601)
    plan = [rng.randint(1, 6) if rng.random() < 0.4 else None for _ in range(CLIENTS)]
    assert 10 < sum(p is not None for p in plan) < 50

    async def storm() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=CLIENTS + 8, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            return await asyncio.wait_for(
                asyncio.gather(*(one_stream(http, i, p) for i, p in enumerate(plan))), 90)

    results = asyncio.run(storm())
    for i, (hang_up, res) in enumerate(zip(plan, results, strict=True)):
        if hang_up is None:
            assert res["done"], (i, res)
            assert res["finish"] == "length", (i, res)
            assert res["usage"]["completion_tokens"] == MAX_TOKENS, (i, res)
        else:
            assert not res["done"] and res["chunks"] == hang_up

    # Every engine request ends: finished, or aborted because its client left.
    engine = server.engine
    assert engine is not None
    deadline = time.monotonic() + 20
    while True:
        stats = server.call(engine.stats())
        if (stats.num_running, stats.num_waiting) == (0, 0) and \
                stats.num_free_blocks == stats.num_blocks:
            break
        assert time.monotonic() < deadline, f"engine did not drain: {stats}"
        time.sleep(0.05)
    assert stats.kv_usage == 0.0

    # One evidence record per request, the hung-up ones included.
    evidence = Path(server.server.config.app.state.server.data_dir) / "evidence.jsonl"
    deadline = time.monotonic() + 10
    while len(records := evidence.read_text().splitlines()) < CLIENTS:
        assert time.monotonic() < deadline, f"{len(records)} evidence records"
        time.sleep(0.05)
    reasons = [json.loads(r)["finish_reasons"] for r in records]
    assert len(reasons) == CLIENTS
    assert sum(r == ["abort"] for r in reasons) >= 1
    assert sum(r == ["length"] for r in reasons) >= sum(p is None for p in plan)

    # And the server still serves.
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "after the storm",
                                               "max_tokens": 3, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
