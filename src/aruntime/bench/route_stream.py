"""How `bench route` sends a request, to a worker or through the pool's router: streamed to its
end, timing its first token from the send and in the engine, and the gaps between tokens."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from aruntime.engine.sampling import SamplingParams


class Streamed(NamedTuple):
    ttft_s: float
    cached: int  # prompt tokens reused
    engine_s: float  # of the TTFT, from the request's arrival at the engine to its first token
    gaps_s: list[float]  # between one streamed token and the next


async def send(client: Any, rid: str, prompt: list[int], max_tokens: int = 1) -> Streamed:
    """Stream a request to its end."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    ttft, cached, engine, last, gaps = 0.0, 0, 0.0, 0.0, []
    async for out in client.generate(rid, prompt, params):
        now = time.perf_counter()
        if not ttft:
            ttft, cached = now - t0, out.num_cached_tokens
            engine = (out.first_token_time - out.arrival_time
                      if out.first_token_time and out.arrival_time else ttft)
        elif out.new_token_ids:
            gaps.append(now - last)
        last = now
    return Streamed(ttft, cached, engine, gaps)

