"""Colocated serving: N >= 1 engine core processes behind one `ServingPool`, routed by a `Router`.

Each worker is an `MPClient` (its own core process) that publishes its KV events on its own
ipc endpoint as `w0..wN-1`; one `CacheDirectory` follows them all, so the router knows which
worker holds which prefix, in which tier. A worker registers with its role, key scheme and
capacity (KV blocks) when it starts; it is live while its core process is. One worker is a pool
of one: its load and cache are known the same way, so admission predicts the same way.

A request whose worker dies before its first token is retried on another live worker (its
prompt was not yet answered, so nobody can tell). Once tokens were streamed it cannot be
replayed unseen: it fails with `EngineDeadError` naming the worker, which the API turns into a
503-style error. Either way nothing hangs: `MPClient` fails every waiter when its core exits.

The routing audit pairs, per request, the cached tokens the router predicted with those the
engine reused (`route_of`, `audit`, and the series of `collectors`).

A subclass brings other workers and prefix directories (`_make_worker`, `_open_directory`):
cluster/ray/pool.py runs the same pool over Ray actors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Protocol

from prometheus_client.registry import Collector

from aruntime.cluster.audit import Audit
from aruntime.cluster.metrics import PoolCollector
from aruntime.cluster.router import RoutePolicy, Router, WorkerLoad
from aruntime.cluster.serving import (
    ROUTES_KEPT,
    STATS_TIMEOUT_S,
    PoolWorker,
    RouteRecord,
    ServingPool,
    WorkerInfo,
    WorkerNow,
    merge_stats,
)
from aruntime.engine.client import EngineDeadError
from aruntime.engine.config import EngineConfig
from aruntime.engine.core_proc import ModelInfo
from aruntime.engine.mp_client import MPClient
from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.engine.sampling import SamplingParams
from aruntime.ipc_dir import ipc_dir
from aruntime.kv.directory import CacheDirectory, DirectoryError
from aruntime.kv.directory_index import PrefixMatch
from aruntime.kv.keys import NO_SCOPE, BlockKey, CacheScope, KeyScheme, request_keys

__all__ = ["PrefixDirectory", "WorkerPool"]


class PrefixDirectory(Protocol):
    """Which workers hold a prompt's leading blocks (`CacheDirectory`, or a Ray pool's own)."""

    def longest_prefix(self, keys: list[BlockKey]) -> list[PrefixMatch]: ...
    def close(self) -> None: ...


class WorkerPool(ServingPool):
    PLACEMENT = "local"  # engine core processes on this machine
    def __init__(self, config: EngineConfig, num_workers: int = 1, policy: str = "kv", *,
                 seed: int | None = None, startup_timeout: float = 600.0,
                 role: str = "colocated", worker_prefix: str = "w") -> None:
        if num_workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.config = config
        self.router = Router(policy, config.block_size, seed=seed)
        self.audit = Audit()
        self.role = role
        self._sockdir: str | None = None
        self._events: dict[str, tuple[str, str | None]] = {}  # worker -> its KV event endpoints
        self.workers: dict[str, PoolWorker] = {
            f"{worker_prefix}{i}": self._make_worker(f"{worker_prefix}{i}", startup_timeout)
            for i in range(num_workers)}
        self._registry: dict[str, WorkerInfo] = {}
        self.directory: PrefixDirectory | None = None
        self.scheme: KeyScheme | None = None  # the workers' block keys, once started
        self._routes: OrderedDict[str, RouteRecord] = OrderedDict()
        self._route_by: OrderedDict[str, RoutePolicy] = OrderedDict()  # route_by's, not yet used
        self._attached = False

    @property
    def policy(self) -> str:
        return self.router.policy

    @property
    def registry(self) -> dict[str, WorkerInfo]:
        return self._registry

    @property
    def is_alive(self) -> bool:
        return bool(self.live_workers())

    def live_workers(self) -> list[str]:
        return [wid for wid, w in self.workers.items() if w.is_alive]

    def health(self) -> dict[str, bool]:
        return {wid: w.is_alive for wid, w in self.workers.items()}

    def collectors(self) -> Iterable[Collector]:
        return [PoolCollector(lambda: [self])]

    def start(self) -> ModelInfo:
        if self._info is not None:
            return self._info
        try:
            with ThreadPoolExecutor(len(self.workers)) as ex:
                infos = list(ex.map(lambda w: w.start(), self.workers.values()))
        except BaseException:
            self.close()
            raise
        self._info = infos[0]
        self.scheme = KeyScheme(self.config.block_size, self._info.revision)
        for (wid, w), info in zip(self.workers.items(), infos, strict=True):
            self._registry[wid] = WorkerInfo(wid, self.role, self.scheme, info.num_blocks,
                                             w.core_pid)
        self.directory = self._open_directory(self.scheme)
        return self._info

    def _make_worker(self, worker_id: str, startup_timeout: float) -> PoolWorker:
        """An engine core process publishing its KV events for the directory."""
        if self._sockdir is None:
            self._sockdir = ipc_dir("aruntime-pool-")
        events = (f"ipc://{self._sockdir}/{worker_id}-events",
                  f"ipc://{self._sockdir}/{worker_id}-replay")
        self._events[worker_id] = events
        kv = dataclasses.replace(self.config.kv, events=True, events_endpoint=events[0],
                                 events_replay_endpoint=events[1])
        return MPClient(dataclasses.replace(self.config, worker_id=worker_id, kv=kv),
                        startup_timeout=startup_timeout)

    def _open_directory(self, scheme: KeyScheme) -> PrefixDirectory:
        """Where the router learns which worker holds which prefix: the workers' KV events."""
        return CacheDirectory(list(self._events.values()), scheme=scheme).start()

    async def _attach_all(self) -> None:
        """Bind every worker to this loop, so a core's exit is noticed even by an idle one."""
        if not self._attached:
            self._attached = True
            await asyncio.gather(*(w.stats() for w in self.workers.values()),
                                 return_exceptions=True)

    def route_of(self, request_id: str) -> RouteRecord | None:
        return self._routes.get(request_id)

    def route_by(self, request_id: str, route: RoutePolicy) -> None:
        self._route_by[request_id] = route
        while len(self._route_by) > ROUTES_KEPT:
            self._route_by.popitem(last=False)

    async def workers_now(self) -> list[WorkerNow]:
        ids = list(self.workers)
        stats = await asyncio.gather(*(self._stats_of(w) for w in ids))
        return [WorkerNow(wid, self.role, self.PLACEMENT, self.workers[wid].core_pid,
                          self.workers[wid].is_alive, self.router.load(wid), got)
                for wid, got in zip(ids, stats, strict=True)]

    async def _stats_of(self, worker_id: str) -> EngineStats | None:
        w = self.workers[worker_id]
        if not w.is_alive:
            return None
        try:
            return await asyncio.wait_for(w.stats(), STATS_TIMEOUT_S)
        except Exception:  # a worker that cannot answer shows as such, nothing more
            return None

    def recent_routes(self, n: int) -> list[RouteRecord]:
        # the newest n walked from the end: not a copy of all ROUTES_KEPT once a second
        return list(islice(reversed(self._routes.values()), n))[::-1] if n > 0 else []

    def running_beside(self, request_id: str) -> int:
        route = self._routes.get(request_id)
        return max(1, self.router.load(route.worker).running if route is not None else 1)

    def _record(self, route: RouteRecord) -> None:
        self._routes[route.request_id] = route
        while len(self._routes) > ROUTES_KEPT:
            self._routes.popitem(last=False)

    def _keys(self, prompt: list[int], scope: CacheScope) -> list[BlockKey]:
        """The prompt's block keys: every worker of the pool has the same scheme."""
        assert self.scheme is not None
        return request_keys(self.scheme, prompt, scope)

    def _matches(self, keys: list[BlockKey]) -> list[PrefixMatch]:
        assert self.directory is not None
        try:
            return self.directory.longest_prefix(keys)
        except DirectoryError:
            return []  # route blind rather than fail the request

    def candidate_loads(self, prompt: list[int],
                        scope: CacheScope = NO_SCOPE) -> list[tuple[WorkerLoad, int]]:
        live = self.live_workers()
        if not live or self.directory is None:
            return []
        matches = self._matches(self._keys(prompt, scope))
        return [(self.router.load(w), self.router.predicted(w, matches, len(prompt))[0])
                for w in live]

    def _decide(self, request_id: str, keys: list[BlockKey], prompt_tokens: int,
                exclude: set[str], lost: EngineDeadError | None = None) -> RouteRecord:
        """`lost`: why the last try failed, told when no worker is left to try."""
        live = [w for w in self.live_workers() if w not in exclude]
        if not live:
            raise EngineDeadError(f"no live worker can take request {request_id} "
                                  f"(tried {', '.join(sorted(exclude)) or 'none'})"
                                  + (f": {lost}" if lost is not None else ""))
        decision = self.router.choose([self.router.load(w) for w in live], self._matches(keys),
                                      prompt_tokens, self._route_by.get(request_id))
        return RouteRecord(request_id, decision.worker, decision.predicted_cached_tokens,
                           attempts=len(exclude) + 1)

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, scope: CacheScope = NO_SCOPE,
                       ) -> AsyncGenerator[RequestOutput, None]:
        if self._info is None:
            raise RuntimeError("the worker pool has not been started")
        await self._attach_all()
        tried: set[str] = set()
        keys = self._keys(prompt_token_ids, scope)  # once: retries too
        lost: EngineDeadError | None = None
        try:
            while True:
                route = self._decide(request_id, keys, len(prompt_token_ids), tried, lost)
                self._record(route)
                tried.add(route.worker)
                attempt = self._attempt(route, prompt_token_ids, params, scope)
                lost = None
                try:
                    async for item in attempt:
                        if isinstance(item, EngineDeadError):
                            lost = item  # the worker failed before answering: try another
                            break
                        yield item
                finally:
                    await attempt.aclose()
                if lost is None:
                    return
                self.audit.retries += 1
        finally:
            self._route_by.pop(request_id, None)

    async def _attempt(self, route: RouteRecord, prompt: list[int], params: SamplingParams,
                       scope: CacheScope,
                       ) -> AsyncGenerator[RequestOutput | EngineDeadError, None]:
        """One worker's try: its outputs, or the error alone when it failed before the first
        (it died, or lost the request: a parallel rank gone)."""
        worker = route.worker
        prefill = max(1, len(prompt) - route.predicted_cached_tokens)
        self.router.sent(worker, prefill)
        first = False
        stream = self.workers[worker].generate(route.request_id, prompt, params, scope)
        try:
            async for out in stream:
                if not first:
                    first = True
                    self.router.prefilled(worker, prefill)
                    route.cached_tokens_used = out.num_cached_tokens
                    self.audit.checked(route.predicted_cached_tokens, out.num_cached_tokens)
                yield out
        except EngineDeadError as exc:
            if first:
                self.audit.failed_mid_stream += 1
                raise EngineDeadError(f"worker {worker} died while request {route.request_id} "
                                      f"was streaming; it cannot be resumed: {exc}") from exc
            yield exc
        finally:
            self.router.finished(worker, prefill, first)
            await stream.aclose()

    async def abort(self, request_id: str) -> None:
        route = self._routes.get(request_id)
        if route is not None and self.workers[route.worker].is_alive:
            await self.workers[route.worker].abort(request_id)

    async def stats(self) -> EngineStats:
        """The live workers' counters summed (their KV usage averaged)."""
        live = [self.workers[w] for w in self.live_workers()]
        if not live:
            raise EngineDeadError("every worker of the pool has stopped")
        got = await asyncio.gather(*(w.stats() for w in live), return_exceptions=True)
        stats = [s for s in got if isinstance(s, EngineStats)]
        if not stats:
            raise EngineDeadError(f"no worker answered: {got[0]!r}")
        return merge_stats(stats)

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.workers.values()),
                             return_exceptions=True)
        self.close()

    def close(self) -> None:
        for w in self.workers.values():
            w.close()
        if self.directory is not None:
            self.directory.close()
            self.directory = None
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
