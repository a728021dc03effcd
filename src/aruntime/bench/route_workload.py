"""`bench route`'s workload: shared-prefix groups, each a whole conversation of the Mooncake
conversation trace whose turns extend the last, and their open-loop arrival schedule."""

from __future__ import annotations

import itertools
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aruntime.bench.cache_workload import TRACE, CacheWorkload, conversation_slice, make_requests
from aruntime.sim.costs import Costs

BLOCK = 16
MAX_SEQS = 16
POLICIES = ("kv", "round-robin", "random")


@dataclass(frozen=True)
class RouteWorkload:
    groups: int = 32  # conversations (128 requests: a p90 over 96 warm turns, not 48)
    turns: int = 4  # requests per group (its first turns)
    workers: int = 4
    tokens_per_hash: int = 8  # a 512-token hash id becomes 8 tokens (1/64 scale)
    max_prompt: int = 640  # conversations whose turns all fit
    min_prompt: int = 128  # ... and whose first turn has this much context to share
    extends: float = 0.5  # ... and whose every turn repeats this share of the last one's blocks
    max_output: int = 4
    pool_share: float = 1.25  # device pool of each worker, in its share (groups/workers) of groups
    load: float = 0.9  # offered load, as a share of the cores' capacity with nothing cached
    chunk: int = 256  # prefill tokens per engine step: a short prompt waits for one chunk at most
    seed: int = 0
    repeats: int = 3  # runs of each policy, interleaved; its figures are their medians


QUICK = RouteWorkload(groups=8, turns=3, repeats=1)


@dataclass
class Sent:
    group: int
    turn: int
    prompt: list[int]
    output_tokens: int
    at: float = 0.0  # scheduled arrival, seconds from the start


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def make_groups(w: RouteWorkload, vocab: int, trace: Path = TRACE) -> list[list[Sent]]:
    """Each group's first `turns` turns, in order."""
    cw = CacheWorkload(conversations=10_000, min_turns=w.turns,
                       tokens_per_hash=w.tokens_per_hash, max_output=w.max_output, seed=w.seed)
    rows = conversation_slice(trace, cw, w.max_prompt)
    by_group: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_group.setdefault(row["hash_ids"][1], []).append(row)
    scale = 512 // w.tokens_per_hash

    def shared_prefix(turns: list[dict[str, Any]]) -> bool:
        return -(-turns[0]["input_length"] // scale) >= w.min_prompt and all(
            _common(a["hash_ids"], b["hash_ids"]) >= w.extends * len(a["hash_ids"])
            for a, b in itertools.pairwise(turns))

    chosen = [turns[:w.turns] for turns in by_group.values()
              if shared_prefix(turns[:w.turns])][:w.groups]
    if len(chosen) < w.groups:
        raise ValueError(f"the trace has only {len(chosen)} conversations of {w.turns} turns "
                         f"from {w.min_prompt} to {w.max_prompt} tokens")
    groups = []
    for g, turns in enumerate(chosen):
        reqs = make_requests(turns, cw, vocab)
        groups.append([Sent(g, k, r.prompt, r.output_tokens) for k, r in enumerate(reqs)])
    return groups


def schedule(w: RouteWorkload, groups: list[list[Sent]], costs: Costs, cores: float) -> float:
    """Set every request's `at`: Poisson arrivals at `load` x the cold capacity of `cores` (the
    prefill of their prompts, the work a cache can save), over a seeded random interleaving of
    the conversations that keeps each one's turns in order, so new conversations keep starting
    while others go on. Returns the rate (req/s)."""
    sent = [s for turns in groups for s in turns]
    rate = w.load * cores / statistics.fmean(costs.prompt_s(len(s.prompt), w.chunk) for s in sent)
    rng = random.Random(w.seed)
    left = [list(reversed(turns)) for turns in groups]
    t = 0.0
    while any(left):  # draw the next turn from a conversation weighted by the turns it has left
        turns = rng.choices([x for x in left if x], weights=[len(x) for x in left if x])[0]
        t += rng.expovariate(rate)
        turns.pop().at = t
    return rate

