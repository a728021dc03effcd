"""What the multi-process tests share about the tiny checkpoint: a block size, its KV bytes,
seeded prompts and a small engine config."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aruntime.cluster.serving import ServingPool
from aruntime.engine.client import EngineClient, EngineDeadError
from aruntime.engine.config import EngineConfig
from aruntime.engine.sampling import SamplingParams

BLOCK = 4
BLOCK_BYTES = 2 * 2 * 2 * BLOCK * 16 * 4  # tiny: layers * (k, v) * kv_heads * block * dim * fp32


def prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 1500) for _ in range(n)]


def config(model: Path) -> EngineConfig:
    return EngineConfig(model=str(model), device="cpu", block_size=BLOCK,
                        kv_cache_bytes=128 * BLOCK_BYTES, max_num_seqs=8)


LONG = SamplingParams(max_tokens=490, temperature=0.0, ignore_eos=True)


async def kill_at_first_token(client: EngineClient, request_id: str, ids: list[int],
                              kill: Callable[[], Any]) -> str:
    """Stream a long request and, once its first token is out, `kill()` the worker serving it.
    Returns the error the stream ended with, or "completed" if the kill came too late."""
    got = 0
    try:
        async for out in client.generate(request_id, ids, LONG):
            got += len(out.new_token_ids)
            if got == 1:
                kill()
    except EngineDeadError as exc:
        return str(exc)
    return "completed"


def metrics_of(pool: ServingPool) -> str:
    """A pool's own series, exposed as the server's /metrics shows them."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    for collector in pool.collectors():
        registry.register(collector)
    return generate_latest(registry).decode()


def fails_on_two_rows(run: Callable[..., Any]) -> Callable[..., Any]:
    """`run`, raising on an input of two rows: a runtime that breaks while serving, after the
    gate (whose probes never have two rows) let it through."""
    def maybe(*inputs: Any) -> Any:
        if inputs[0].shape[0] == 2:
            raise RuntimeError("the runtime fell over")
        return run(*inputs)
    return maybe
