"""Colocated serving: N engine core processes behind one `EngineClient`, routed by a `Router`.

Each worker is an `MPClient` (its own core process) that publishes its KV events on its own
ipc endpoint as `w0..wN-1`; one `CacheDirectory` follows them all, so the router knows which
worker holds which prefix, in which tier. A worker registers with its role, key scheme and
capacity (KV blocks) when it starts; it is live while its core process is.

A request whose worker dies before its first token is retried on another live worker (its
prompt was not yet answered, so nobody can tell). Once tokens were streamed it cannot be
replayed unseen: it fails with `EngineDeadError` naming the worker, which the API turns into a
503-style error. Either way nothing hangs: `MPClient` fails every waiter when its core exits.

The routing audit pairs, per request, the cached tokens the router predicted with those the
engine reused (`route_of`, `audit`, and the Prometheus lines of `metrics_text`).

A subclass brings other workers and prefix directories (`_make_worker`, `_open_directory`):
cluster/ray/pool.py runs the same pool over Ray actors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from aruntime.cluster.router import Router, WorkerLoad
from aruntime.engine.client import EngineClient, EngineDeadError
from aruntime.engine.config import EngineConfig
from aruntime.engine.core_client import MPClient
from aruntime.engine.core_proc import ModelInfo
from aruntime.engine.outputs import EngineStats, RequestOutput, TierStats
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.directory import CacheDirectory, DirectoryError
from aruntime.kv.directory_index import PrefixMatch
from aruntime.kv.keys import BlockKey, KeyScheme, request_keys

__all__ = ["PoolWorker", "PrefixDirectory", "RouteRecord", "WorkerInfo", "WorkerPool"]

ROUTES_KEPT = 4096  # per-request audit records kept for the evidence log to pick up


class PoolWorker(Protocol):
    """One worker as the pool drives it: an `EngineClient` it starts and closes (`MPClient`, or
    a Ray actor's handle)."""

    @property
    def is_alive(self) -> bool: ...
    @property
    def core_pid(self) -> int | None: ...
    def start(self) -> ModelInfo: ...
    def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 tenant_salt: bytes = b"", shared_prefix_tokens: int = 0,
                 ) -> AsyncIterator[RequestOutput]: ...
    async def abort(self, request_id: str) -> None: ...
    async def stats(self) -> EngineStats: ...
    async def shutdown(self) -> None: ...
    def close(self) -> None: ...


class PrefixDirectory(Protocol):
    """Which workers hold a prompt's leading blocks (`CacheDirectory`, or a Ray pool's own)."""

    def longest_prefix(self, keys: list[BlockKey]) -> list[PrefixMatch]: ...
    def close(self) -> None: ...


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
    request_id: str
    worker: str
    predicted_cached_tokens: int
    cached_tokens_used: int | None = None
    attempts: int = 1


@dataclass(slots=True)
class Audit:
    requests: int = 0  # requests whose first token came (prediction checked)
    predicted_tokens: int = 0
    used_tokens: int = 0
    abs_error_tokens: int = 0
    retries: int = 0
    failed_mid_stream: int = 0

    @property
    def error(self) -> float:
        """Absolute prediction error as a share of the tokens actually reused."""
        return self.abs_error_tokens / max(1, self.used_tokens)


class WorkerPool(EngineClient):
    """`start()` blocks until every worker is ready (they load in parallel); the async methods
    then bind to the loop that calls them first, like `MPClient`'s."""

    keeps_loads = True

    def __init__(self, config: EngineConfig, num_workers: int, policy: str = "kv", *,
                 seed: int | None = None, startup_timeout: float = 600.0,
                 role: str = "colocated", worker_prefix: str = "w") -> None:
        if num_workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.config = config
        self.router = Router(policy, config.block_size, seed=seed)
        self.audit = Audit()
        self.role = role
        self._sockdir: str | None = None
        self.workers: dict[str, PoolWorker] = {
            f"{worker_prefix}{i}": self._make_worker(f"{worker_prefix}{i}", startup_timeout)
            for i in range(num_workers)}
        self.registry: dict[str, WorkerInfo] = {}
        self.directory: PrefixDirectory | None = None
        self.scheme: KeyScheme | None = None  # the workers' block keys, once started
        self._routes: OrderedDict[str, RouteRecord] = OrderedDict()
        self._attached = False

    @property
    def policy(self) -> str:
        return self.router.policy

    @property
    def is_alive(self) -> bool:
        return bool(self.live_workers())

    def live_workers(self) -> list[str]:
        return [wid for wid, w in self.workers.items() if w.is_alive]

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
            self.registry[wid] = WorkerInfo(wid, self.role, self.scheme, info.num_blocks,
                                            w.core_pid)
        self.directory = self._open_directory(self.scheme)
        return self._info

    def _make_worker(self, worker_id: str, startup_timeout: float) -> PoolWorker:
        """An engine core process publishing its KV events for the directory."""
        if self._sockdir is None:
            self._sockdir = tempfile.mkdtemp(prefix="aruntime-pool-")  # ipc paths must be short
        cfg = dataclasses.replace(
            self.config, worker_id=worker_id, kv_events=True,
            kv_events_endpoint=f"ipc://{self._sockdir}/{worker_id}-events",
            kv_events_replay_endpoint=f"ipc://{self._sockdir}/{worker_id}-replay")
        return MPClient(cfg, startup_timeout=startup_timeout)

    def _open_directory(self, scheme: KeyScheme) -> PrefixDirectory:
        """Where the router learns which worker holds which prefix: the workers' KV events."""
        return CacheDirectory(
            [(w.config.kv_events_endpoint or "", w.config.kv_events_replay_endpoint)
             for w in self.workers.values() if isinstance(w, MPClient)], scheme=scheme).start()

    async def _attach_all(self) -> None:
        """Bind every worker to this loop, so a core's exit is noticed even by an idle one."""
        if not self._attached:
            self._attached = True
            await asyncio.gather(*(w.stats() for w in self.workers.values()),
                                 return_exceptions=True)

    def route_of(self, request_id: str) -> RouteRecord | None:
        return self._routes.get(request_id)

    def running_beside(self, request_id: str) -> int | None:
        route = self._routes.get(request_id)
        return self.router.load(route.worker).running if route is not None else None

    def _record(self, route: RouteRecord) -> None:
        self._routes[route.request_id] = route
        while len(self._routes) > ROUTES_KEPT:
            self._routes.popitem(last=False)

    def _keys(self, prompt: list[int], tenant_salt: bytes,
              shared_prefix_tokens: int) -> list[BlockKey]:
        """The prompt's block keys: every worker of the pool has the same scheme."""
        assert self.scheme is not None
        return request_keys(self.scheme, prompt, tenant_salt, shared_prefix_tokens)

    def _matches(self, keys: list[BlockKey]) -> list[PrefixMatch]:
        assert self.directory is not None
        try:
            return self.directory.longest_prefix(keys)
        except DirectoryError:
            return []  # route blind rather than fail the request

    def candidate_loads(self, prompt: list[int], tenant_salt: bytes = b"",
                        shared_prefix_tokens: int = 0) -> list[tuple[WorkerLoad, int]]:
        """For admission control: each live worker's load now, and the prompt tokens the
        router predicts it has cached."""
        live = self.live_workers()
        if not live or self.directory is None:
            return []
        matches = self._matches(self._keys(prompt, tenant_salt, shared_prefix_tokens))
        return [(self.router.load(w), self.router.predicted(w, matches, len(prompt))[0])
                for w in live]

    def _decide(self, request_id: str, keys: list[BlockKey], prompt_tokens: int,
                exclude: set[str]) -> RouteRecord:
        live = [w for w in self.live_workers() if w not in exclude]
        if not live:
            raise EngineDeadError(f"no live worker can take request {request_id} "
                                  f"(tried {', '.join(sorted(exclude)) or 'none'})")
        decision = self.router.choose([self.router.load(w) for w in live], self._matches(keys),
                                      prompt_tokens)
        return RouteRecord(request_id, decision.worker, decision.predicted_cached_tokens,
                           attempts=len(exclude) + 1)

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
        tenant_salt: bytes = b"", shared_prefix_tokens: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        if self._info is None:
            raise RuntimeError("the worker pool has not been started")
        await self._attach_all()
        tried: set[str] = set()
        keys = self._keys(prompt_token_ids, tenant_salt, shared_prefix_tokens)  # once: retries too
        while True:
            route = self._decide(request_id, keys, len(prompt_token_ids), tried)
            self._record(route)
            tried.add(route.worker)
            attempt = self._attempt(route, prompt_token_ids, params, tenant_salt,
                                    shared_prefix_tokens)
            died = False
            try:
                async for item in attempt:
                    if item is None:
                        died = True  # the worker died before answering: try another
                        break
                    yield item
            finally:
                await attempt.aclose()
            if not died:
                return
            self.audit.retries += 1

    async def _attempt(self, route: RouteRecord, prompt: list[int], params: SamplingParams,
                       tenant_salt: bytes, shared_prefix_tokens: int,
                       ) -> AsyncIterator[RequestOutput | None]:
        """One worker's try: its outputs, or a single None when it died before the first."""
        worker, n = route.worker, len(prompt)
        prefill = max(1, n - route.predicted_cached_tokens)
        self.router.sent(worker, prefill)
        first = False
        stream = self.workers[worker].generate(route.request_id, prompt, params, tenant_salt,
                                               shared_prefix_tokens)
        try:
            async for out in stream:
                if not first:
                    first = True
                    self.router.prefilled(worker, prefill)
                    self._audit_first(route, out)
                yield out
        except EngineDeadError as exc:
            if first:
                self.audit.failed_mid_stream += 1
                raise EngineDeadError(f"worker {worker} died while request {route.request_id} "
                                      f"was streaming; it cannot be resumed: {exc}") from exc
            yield None
        finally:
            self.router.finished(worker, prefill, first)
            await stream.aclose()

    def _audit_first(self, route: RouteRecord, out: RequestOutput) -> None:
        used = out.num_cached_tokens
        route.cached_tokens_used = used
        a = self.audit
        a.requests += 1
        a.predicted_tokens += route.predicted_cached_tokens
        a.used_tokens += used
        a.abs_error_tokens += abs(route.predicted_cached_tokens - used)

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

    def metrics_text(self) -> str:
        """Prometheus lines for the routing audit and worker health."""
        a = self.audit
        lines = [
            "# HELP aruntime_worker_up Whether a pool worker's engine core is running.",
            "# TYPE aruntime_worker_up gauge",
            *(f'aruntime_worker_up{{worker="{w}",role="{self.role}"}} {int(c.is_alive)}'
              for w, c in self.workers.items()),
        ]
        for name, value, help_text in (
            ("route_requests", a.requests, "Routed requests whose prediction was checked."),
            ("route_cached_tokens_predicted", a.predicted_tokens,
             "Prompt tokens the router predicted the chosen worker had cached."),
            ("route_cached_tokens_used", a.used_tokens,
             "Prompt tokens the chosen worker's engine actually reused."),
            ("route_cached_tokens_abs_error", a.abs_error_tokens,
             "Sum over requests of |predicted - used| cached tokens."),
            ("route_retries", a.retries, "Requests retried on another worker."),
            ("route_failed_mid_stream", a.failed_mid_stream,
             "Requests that failed because their worker died while streaming."),
        ):
            lines += [f"# HELP aruntime_{name}_total {help_text}",
                      f"# TYPE aruntime_{name}_total counter",
                      f'aruntime_{name}_total{{policy="{self.policy}"}} {value}']
        return "\n".join(lines) + "\n"

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
