"""Which worker gets a request: routing policies over what the cache directory predicts and what
the router itself has sent. Pure and torch-free: the pool feeds it loads and prefix matches.

`kv` (the default) prices each candidate as the prefill work it would do — prompt tokens less
those restored from its cache, each cached block discounted by its tier's restore cost and
weighted above a queued token — plus the prefill tokens and requests already queued on it and a
weight per running decode; the cheapest wins. The
other policies (`round-robin`, `random`, `least-loaded`) ignore the cache, so they can be
compared with it. Whatever the policy, the decision carries the cached tokens the directory
predicts for the chosen worker: the routing audit compares them with what the engine reused.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aruntime.kv.directory_index import SHARED_WORKER, PrefixMatch
from aruntime.route_policy import POLICIES as POLICIES
from aruntime.route_policy import RoutePolicy

# Share of a block's prefill cost that restoring it from this tier saves.
TIER_WEIGHTS = {"device": 1.0, "host": 0.9, "disk": 0.6, "redis": 0.5}


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """A candidate as the router sees it now."""

    worker_id: str
    queued_prefill_tokens: int = 0
    running: int = 0
    queued_requests: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    worker: str
    predicted_cached_tokens: int
    scores: dict[str, float] = field(default_factory=dict)  # worker -> cost (lower is better)


class Router:
    """Chooses among live candidates; also keeps each worker's load from what it sent."""

    def __init__(self, policy: str | RoutePolicy = "kv", block_size: int = 16, *,
                 seed: int | None = None) -> None:
        self.route = policy if isinstance(policy, RoutePolicy) else RoutePolicy(policy)
        self.block_size = block_size
        self._rng = random.Random(seed)
        self._next = 0
        self._queued: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._waiting: dict[str, int] = {}  # requests sent, first token not yet back

    @property
    def policy(self) -> str:
        return self.route.policy

    # --- load tracking: called by the pool as requests move -----------------------------------

    def sent(self, worker: str, prefill_tokens: int) -> None:
        self._queued[worker] = self._queued.get(worker, 0) + prefill_tokens
        self._waiting[worker] = self._waiting.get(worker, 0) + 1

    def prefilled(self, worker: str, prefill_tokens: int) -> None:
        """The first token came: the prefill is done and the request decodes."""
        self._queued[worker] = max(0, self._queued.get(worker, 0) - prefill_tokens)
        self._waiting[worker] = max(0, self._waiting.get(worker, 0) - 1)
        self._running[worker] = self._running.get(worker, 0) + 1

    def finished(self, worker: str, prefill_tokens: int, prefilled: bool) -> None:
        if prefilled:
            self._running[worker] = max(0, self._running.get(worker, 0) - 1)
        else:
            self._queued[worker] = max(0, self._queued.get(worker, 0) - prefill_tokens)
            self._waiting[worker] = max(0, self._waiting.get(worker, 0) - 1)

    def load(self, worker: str) -> WorkerLoad:
        return WorkerLoad(worker, self._queued.get(worker, 0), self._running.get(worker, 0),
                          self._waiting.get(worker, 0))

    # --- the decision -------------------------------------------------------------------------

    def predicted(self, worker: str, matches: Sequence[PrefixMatch],
                  prompt_tokens: int) -> tuple[int, float]:
        """(cached tokens, restore-weighted cached tokens) the worker would reuse: its own
        blocks, then the shared Redis tier's beyond them; at least one token is computed."""
        by_worker = {m.worker_id: m for m in matches}
        return self._predicted(by_worker.get(worker), by_worker.get(SHARED_WORKER), prompt_tokens)

    def _predicted(self, own: PrefixMatch | None, shared: PrefixMatch | None,
                   prompt_tokens: int) -> tuple[int, float]:
        usable = max(0, (prompt_tokens - 1) // self.block_size)
        blocks, weighted = 0, 0.0
        if own is not None:
            tiers: Iterable[tuple[str, int]] = own.by_tier.items()
            if len(own.by_tier) > 1:  # the cheapest to restore first
                tiers = sorted(tiers, key=lambda kv: -TIER_WEIGHTS.get(kv[0], 0))
            for tier, n in tiers:
                take = min(n, usable - blocks)
                blocks += take
                weighted += take * TIER_WEIGHTS.get(tier, 0.5)
        if shared is not None and shared.num_blocks > blocks:
            extra = min(shared.num_blocks, usable) - blocks
            blocks += max(0, extra)
            weighted += max(0, extra) * TIER_WEIGHTS[SHARED_WORKER]
        return blocks * self.block_size, weighted * self.block_size

    def cost(self, load: WorkerLoad, weighted_cached: float, prompt_tokens: int,
             route: RoutePolicy | None = None) -> float:
        r = route or self.route
        return (prompt_tokens - r.cache_weight * weighted_cached + load.queued_prefill_tokens
                + r.request_weight * load.queued_requests + r.decode_weight * load.running)

    def choose(self, candidates: Sequence[WorkerLoad], matches: Sequence[PrefixMatch],
               prompt_tokens: int, route: RoutePolicy | None = None) -> Decision:
        """The cheapest candidate by `route` (default: the router's own policy)."""
        route = route or self.route
        if not candidates:
            raise ValueError("no candidate worker")
        ids = [c.worker_id for c in candidates]
        by_worker = {m.worker_id: m for m in matches}
        shared = by_worker.get(SHARED_WORKER)

        def hit(w: str) -> tuple[int, float]:
            if shared is None and w not in by_worker:
                return 0, 0.0
            return self._predicted(by_worker.get(w), shared, prompt_tokens)

        scores: dict[str, float] = {}  # only the policies that price candidates fill it
        if route.policy == "kv":
            scores = {c.worker_id: self.cost(c, hit(c.worker_id)[1], prompt_tokens, route)
                      for c in candidates}
            # ties (e.g. nothing cached, nothing queued) rotate, so cold groups spread out
            start = self._next % len(ids)
            order = ids[start:] + ids[:start]
            worker = min(order, key=lambda w: scores[w])
            self._next += 1
        elif route.policy == "round-robin":
            worker = ids[self._next % len(ids)]
            self._next += 1
        elif route.policy == "random":
            worker = self._rng.choice(ids)
        else:  # least-loaded: the cache is ignored
            scores = {c.worker_id: self.cost(c, 0.0, 0, route) for c in candidates}
            worker = min(ids, key=lambda w: scores[w])
        return Decision(worker, hit(worker)[0], scores)
