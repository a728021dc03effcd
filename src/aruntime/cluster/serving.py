"""The seam between the HTTP server and the cluster: `ServingPool`, a pool of N >= 1 workers
behind the engine's own interface.

serve/ drives every deployment through it — one engine core process, several behind the KV-aware
router, prefill and decode workers, or the same as Ray actors — and never learns which. Beyond
the engine seam (generate, abort, stats, shutdown) a pool answers what only it knows: where a
request would go and what it would find cached there (admission), where it went (evidence), and
its own metrics (collectors for the server's one registry), and what the operator console
shows of its workers and recent routes.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.registry import Collector

from aruntime.cluster.router import RoutePolicy, WorkerLoad
from aruntime.engine.client import EngineClient
from aruntime.engine.core_proc import ModelInfo
from aruntime.engine.outputs import EngineStats, RequestOutput, TierStats
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.keys import NO_SCOPE, CacheScope, KeyScheme

__all__ = ["PoolWorker", "RouteRecord", "ServingPool", "WorkerInfo", "WorkerNow", "merge_stats"]

STATS_TIMEOUT_S = 2.0
ROUTES_KEPT = 4096  # per-request records kept for the evidence log to pick up


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker registers with."""

    worker_id: str
    role: str  # "colocated": prefill and decode in one engine; or "prefill", "decode"
    scheme: KeyScheme
    num_blocks: int
    pid: int | None


@dataclass(slots=True)
class RouteRecord:
    """Where one request went, what the router predicted it would find cached there, and what
    the engine reused (set at its first token)."""

    request_id: str
    worker: str
    predicted_cached_tokens: int
    cached_tokens_used: int | None = None
    attempts: int = 1
    at: float = field(default_factory=time.time)  # when it was routed


@dataclass(frozen=True, slots=True)
class WorkerNow:
    """One worker as an operator sees it now: what it registered as, whether it lives, the
    router's view of its load and its engine's counters (None: it did not answer in time)."""

    worker_id: str
    role: str
    placement: str  # "local" (a process on this machine) or "ray" (an actor)
    pid: int | None
    alive: bool
    load: WorkerLoad
    stats: EngineStats | None


class PoolWorker(Protocol):
    """One worker as a pool drives it: an engine client it starts and closes (`MPClient`, or a
    Ray actor's handle)."""

    @property
    def is_alive(self) -> bool: ...
    @property
    def core_pid(self) -> int | None: ...
    def start(self) -> ModelInfo: ...
    def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 scope: CacheScope = NO_SCOPE) -> AsyncGenerator[RequestOutput, None]: ...
    async def abort(self, request_id: str) -> None: ...
    async def stats(self) -> EngineStats: ...
    async def shutdown(self) -> None: ...
    def close(self) -> None: ...


class ServingPool(EngineClient):
    """`start()` blocks until every worker is ready; the async methods then bind to the event
    loop that calls them first (the server's)."""

    # -- lifecycle: called by whoever builds the server, once each

    @abstractmethod
    def start(self) -> ModelInfo:
        """Start every worker (in parallel) and return the model they serve."""

    @abstractmethod
    def close(self) -> None:
        """Synchronous teardown: stop every worker (killing what does not exit)."""

    @property
    @abstractmethod
    def registry(self) -> dict[str, WorkerInfo]:
        """The workers by id, as they registered when they started (empty before)."""

    # -- admission: called on the server's loop before a request is accepted

    @abstractmethod
    def candidate_loads(self, prompt: list[int],
                        scope: CacheScope = NO_SCOPE) -> list[tuple[WorkerLoad, int]]:
        """Each worker a request could go to: its load now, and the prompt tokens predicted to
        be cached there. Changes nothing."""

    @abstractmethod
    def route_by(self, request_id: str, route: RoutePolicy) -> None:
        """Route `request_id`, about to be generated, by `route` instead of the pool's own
        policy: a route release's version, as a rollout assigns it (kept until it is routed,
        at most ROUTES_KEPT of them)."""

    @abstractmethod
    def running_beside(self, request_id: str) -> int:
        """Decodes running on the worker a request went to, itself included (>= 1)."""

    # -- evidence and metrics

    @abstractmethod
    def route_of(self, request_id: str) -> RouteRecord | None:
        """Where a recent request ran; None once forgotten (the last ROUTES_KEPT are kept)."""

    @abstractmethod
    async def workers_now(self) -> list[WorkerNow]:
        """Every worker now, its engine asked for its counters (at most STATS_TIMEOUT_S each).
        Called by the console, at most once a second; changes nothing."""

    @abstractmethod
    def recent_routes(self, n: int) -> list[RouteRecord]:
        """The last `n` routing decisions, oldest first."""

    @abstractmethod
    def collectors(self) -> Iterable[Collector]:
        """Prometheus collectors for the pool's own series (worker health, routing audit),
        registered once in the server's registry and read at each scrape."""


def merge_stats(stats: list[EngineStats]) -> EngineStats:
    """Engines' counters summed, their KV usage averaged, and each tier's counters summed
    across them: one entry a tier, as /metrics may export one series a tier."""
    total = {f: sum(getattr(s, f) for s in stats) for f in EngineStats.__struct_fields__
             if f not in ("kv_usage", "tiers")}
    tiers: dict[str, TierStats] = {}
    for t in (t for s in stats for t in s.tiers):
        m = tiers.get(t.tier)
        tiers[t.tier] = t if m is None else TierStats(
            tier=t.tier,
            load_buckets=[a + b for a, b in zip(m.load_buckets, t.load_buckets, strict=True)],
            **{f: getattr(m, f) + getattr(t, f) for f in TierStats.__struct_fields__
               if f not in ("tier", "load_buckets")})
    return EngineStats(kv_usage=sum(s.kv_usage for s in stats) / len(stats),
                       tiers=list(tiers.values()), **total)
