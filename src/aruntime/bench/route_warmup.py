"""A `bench route` pool's warm-up, before each run: what the serving path adds to an engine's
steps (lone requests, cold and warm, back to back and after idling, and a decoding one), and
what the cores are worth to it with 1..N workers busy. The simulator runs on these."""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aruntime.bench.route_stream import Streamed, send
from aruntime.bench.route_workload import BLOCK


class Lone(NamedTuple):
    """A request with nothing else in flight, as the serving path ran it."""

    new: int  # prompt tokens computed
    cached: int  # ... and reused
    ttft_s: float  # from its send
    engine_s: float  # from its arrival at the engine to its first token there


class LoneStep(NamedTuple):
    """A decode step of a request with nothing else in flight: the time between two of its
    tokens as they streamed out, which is the serving loop's whole step."""

    context: int  # tokens the step's sequence attends to
    seconds: float


@dataclass
class WarmUp:
    """What a pool's warm-up measured, for the simulator to run as the serving path does."""

    lone: list[Lone] = field(default_factory=list)  # one request in flight, back to back
    woken: list[Lone] = field(default_factory=list)  # ... each after its engine sat idle
    decode_steps: list[LoneStep] = field(default_factory=list)  # a lone request's
    # cold prompts sent at once to 1, 2, ... workers: until the last first token, for each count
    together_s: list[float] = field(default_factory=list)


PROBE_TOKENS = 16  # a length the calibration measures, so its fit is close there
HIT_CONTEXT = 384  # ... and a warm turn's shape: that many tokens cached before it
DECODE_TOKENS = 8  # a lone warm turn streams this many, to time the serving loop's steps
IDLE_S = 0.1  # an engine idles this long before a woken probe, as between a worker's requests
BUSY_TOKENS = 256
BUSY_ROUNDS = 3


def busy_tokens(longest: int) -> int:
    """The prompts that keep workers busy together: as long as the workload's longest, up to
    BUSY_TOKENS."""
    return min(BUSY_TOKENS, longest)


async def warm_up(pool: Any, longest: int) -> WarmUp:
    """A long prompt of its own on every worker (first steps pay for allocations); then lone
    requests one at a time, short cold ones and warm turns after a cached prefix, whose TTFTs
    set against the calibration tell what the serving path adds to an engine step; the same
    warm turns after the engine sat idle, which tell what waking it costs; and a warm turn that
    decodes, whose tokens' spacing tells what the serving loop adds between steps. Then cold
    prompts sent at once to 1, 2, ... workers, one each: the time until the last first token
    (the work over the rate it was done at, however the OS took turns) tells what the cores
    are worth to the serving path with that many busy."""
    workers = list(pool.workers.values())
    out = WarmUp()
    context = min(HIT_CONTEXT, longest - PROBE_TOKENS) // BLOCK * BLOCK

    def lone(sent: Streamed, prompt: list[int]) -> Lone:
        return Lone(len(prompt) - sent.cached, sent.cached, sent.ttft_s, sent.engine_s)

    for i, worker in enumerate(workers):
        await send(worker, f"warm-{i}", [3 + i] * longest)
        for k in range(3):  # a token of its own per prompt, or the warm prompt's prefix
            cold = [50 + 4 * i + k] * PROBE_TOKENS
            out.lone.append(lone(await send(worker, f"probe-{i}-{k}", cold), cold))
            warm = [3 + i] * context + cold
            out.lone.append(lone(await send(worker, f"hit-{i}-{k}", warm), warm))
        for k in range(3):
            await asyncio.sleep(IDLE_S)  # the engine's idle time, not a synchronisation
            warm = [3 + i] * context + [70 + 4 * i + k] * PROBE_TOKENS
            out.woken.append(lone(await send(worker, f"woken-{i}-{k}", warm), warm))
        decoded = await send(worker, f"decode-{i}", [3 + i] * context + [49] * PROBE_TOKENS,
                             DECODE_TOKENS)
        out.decode_steps += [LoneStep(context + PROBE_TOKENS + k, gap)
                             for k, gap in enumerate(decoded.gaps_s, 1)]
    n, salt = busy_tokens(longest), 90
    for busy in range(1, len(workers) + 1):
        rounds = []
        for _ in range(BUSY_ROUNDS):
            prompts = [[salt + i] * n for i in range(busy)]
            sent = await asyncio.gather(*(send(workers[i], f"busy-{salt + i}", prompt)
                                         for i, prompt in enumerate(prompts)))
            salt += busy
            rounds.append(max(x.ttft_s for x in sent))
            if busy == 1:
                out.lone.append(lone(sent[0], prompts[0]))
        out.together_s.append(statistics.median(rounds))
    return out
