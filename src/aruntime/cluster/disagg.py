"""Disaggregated serving on one machine: prefill workers compute prompts, decode workers stream.

Two role groups, each a `WorkerPool` of engine core processes: prefill routed by the KV router
(prefix and load), decode by least load. Every worker opens the same KV transport, a shared
`ShmStore` under /dev/shm, as its top tier. A request goes first to a prefill worker with
`max_tokens=1`: it computes the prompt's uncached blocks, and the engine writes them through to
the transport before that step's output leaves, so when its (discarded) token comes back the
blocks are there. The same request then goes to a decode worker, whose prefix lookup restores
them from the transport; it computes only the prompt's last partial block and streams every
token, the first included, so greedy outputs equal a single worker's.

A prompt shorter than one block skips the prefill, and so does a confidential one (its scope
is device-only: its KV never crosses the transport, so one decode worker computes it all).
When no prefill worker can answer, the decode worker prefills the whole prompt itself (counted
as a fallback); a decode worker that dies mid-stream fails its request with `EngineDeadError`,
as in the colocated pool.
Transport bandwidth is the bytes decode workers restored from it over the time those restores
took (reads and copies into device blocks), read from their tier counters by `stats()`.

cluster/ray/pool.py runs the same flow over Ray actors, the KV going through Ray's object store
(`_transport_config`, `_group`, `_refresh_audit`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.registry import Collector

from aruntime.cluster.audit import TransportAudit
from aruntime.cluster.metrics import PoolCollector, TransportCollector
from aruntime.cluster.pool import WorkerPool
from aruntime.cluster.router import RoutePolicy, WorkerLoad
from aruntime.cluster.serving import (
    ROUTES_KEPT,
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
from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.keys import NO_SCOPE, CacheScope
from aruntime.kv.shm_store import TRANSPORT_TIER, default_transport_root

__all__ = ["DisaggregatedPool", "Handoff"]

PREFILL_ONLY = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)


@dataclass(slots=True)
class Handoff:
    """One request's trip: who prefilled it, who decoded it, what the transport carried."""

    request_id: str
    prefill_worker: str | None  # None: skipped (under a block) or failed (decode prefilled)
    decode_worker: str | None = None
    expected_transport_tokens: int = 0
    decode_cached_tokens: int | None = None


class DisaggregatedPool(ServingPool):
    """`start()` blocks until every worker of both groups is ready."""

    def __init__(self, config: EngineConfig, prefill_workers: int, decode_workers: int,
                 policy: str = "kv", *, transport_dir: str | None = None,
                 seed: int | None = None, startup_timeout: float = 600.0) -> None:
        if prefill_workers < 1 or decode_workers < 1:
            raise ValueError("disaggregated serving needs at least one prefill and one decode "
                             "worker")
        cfg = self._transport_config(config, transport_dir)
        self.prefill = self._group(cfg, prefill_workers, policy, "prefill", seed, startup_timeout)
        self.decode = self._group(cfg, decode_workers, "least-loaded", "decode", seed,
                                  startup_timeout)
        self.config = cfg
        self.audit = TransportAudit()
        self._handoffs: OrderedDict[str, Handoff] = OrderedDict()

    def _transport_config(self, config: EngineConfig, transport_dir: str | None) -> EngineConfig:
        """Every worker opens the shared-memory transport as its top KV tier."""
        self._owned_dir = transport_dir is None
        self.transport_dir: str | None = transport_dir or tempfile.mkdtemp(
            prefix="aruntime-kv-", dir=default_transport_root())
        return dataclasses.replace(
            config, kv=dataclasses.replace(config.kv, transport_dir=self.transport_dir))

    def _group(self, config: EngineConfig, workers: int, policy: str, role: str,
               seed: int | None, startup_timeout: float) -> WorkerPool:
        """One role's workers, named by its initial (p0, d0, ...)."""
        return WorkerPool(config, workers, policy, seed=seed, role=role, worker_prefix=role[0],
                          startup_timeout=startup_timeout)

    @property
    def policy(self) -> str:
        return self.prefill.policy

    @property
    def workers(self) -> dict[str, PoolWorker]:
        return {**self.prefill.workers, **self.decode.workers}

    @property
    def registry(self) -> dict[str, WorkerInfo]:
        return {**self.prefill.registry, **self.decode.registry}

    def collectors(self) -> Iterable[Collector]:
        return [PoolCollector(lambda: [self.prefill, self.decode]),
                TransportCollector(self.audit)]

    @property
    def is_alive(self) -> bool:
        return self.decode.is_alive  # without prefill workers, decode prefills itself

    def live_workers(self) -> list[str]:
        return self.prefill.live_workers() + self.decode.live_workers()

    def start(self) -> ModelInfo:
        if self._info is not None:
            return self._info
        try:
            with ThreadPoolExecutor(2) as ex:
                infos = list(ex.map(lambda g: g.start(), (self.prefill, self.decode)))
        except BaseException:
            self.close()
            raise
        self._info = infos[1]
        return self._info

    def candidate_loads(self, prompt: list[int],
                        scope: CacheScope = NO_SCOPE) -> list[tuple[WorkerLoad, int]]:
        """For admission: a request's first token comes from a prefill worker (its queue, its
        predicted cached tokens), its later tokens from the least-loaded decode worker, whose
        running batch sets the time per token. Without live prefill workers the decode workers
        prefill themselves, and are the candidates."""
        prefill = self.prefill.candidate_loads(prompt, scope)
        decoders = self.decode.live_workers()
        if not prefill or not decoders or self.decode.directory is None:
            return self.decode.candidate_loads(prompt, scope)
        # only their batches count here: no need to predict their caches
        running = min(self.decode.router.load(w).running for w in decoders)
        return [(dataclasses.replace(load, running=running), cached) for load, cached in prefill]

    def handoff_of(self, request_id: str) -> Handoff | None:
        return self._handoffs.get(request_id)

    def route_by(self, request_id: str, route: RoutePolicy) -> None:
        """The prefill leg is routed by it; the decode leg goes to the least-loaded worker."""
        self.prefill.route_by(request_id, route)

    def running_beside(self, request_id: str) -> int:
        return self.decode.running_beside(request_id)  # decodes run on the decode worker

    async def workers_now(self) -> list[WorkerNow]:
        prefill, decode = await asyncio.gather(self.prefill.workers_now(),
                                               self.decode.workers_now())
        return prefill + decode

    def recent_routes(self, n: int) -> list[RouteRecord]:
        """Both groups' decisions (a prefill leg and a decode leg each), oldest first."""
        both = self.prefill.recent_routes(n) + self.decode.recent_routes(n)
        return sorted(both, key=lambda r: r.at)[-n:] if n > 0 else []

    def route_of(self, request_id: str) -> RouteRecord | None:
        """Both legs as one route: the cached tokens predicted are those the transport should
        carry, the used ones those the decode worker reused."""
        hand = self._handoffs.get(request_id)
        route = self.decode.route_of(request_id)
        if hand is None or route is None:
            return route
        worker = f"{hand.prefill_worker}>{route.worker}" if hand.prefill_worker else route.worker
        predicted = hand.expected_transport_tokens or route.predicted_cached_tokens
        return RouteRecord(request_id, worker, predicted, route.cached_tokens_used,
                           route.attempts, route.at)

    def _record(self, hand: Handoff) -> None:
        self._handoffs[hand.request_id] = hand
        while len(self._handoffs) > ROUTES_KEPT:
            self._handoffs.popitem(last=False)

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, scope: CacheScope = NO_SCOPE,
                       ) -> AsyncGenerator[RequestOutput, None]:
        if self._info is None:
            raise RuntimeError("the disaggregated pool has not been started")
        hand = Handoff(request_id, None)
        self._record(hand)
        blocks = (len(prompt_token_ids) - 1) // self.config.block_size
        if blocks == 0:
            self.audit.prefill_skipped += 1
        elif scope.device_only:  # its KV may not cross the transport: one worker does it all
            self.audit.kept_on_device += 1
        else:
            hand.prefill_worker = await self._prefill(request_id, prompt_token_ids, scope)
            if hand.prefill_worker is not None:
                hand.expected_transport_tokens = blocks * self.config.block_size
                self.audit.handoffs += 1
        stream = self.decode.generate(request_id, prompt_token_ids, params, scope)
        try:
            async for out in stream:
                if hand.decode_cached_tokens is None:
                    hand.decode_cached_tokens = out.num_cached_tokens
                    route = self.decode.route_of(request_id)
                    hand.decode_worker = route.worker if route else None
                yield out
        finally:
            await stream.aclose()

    async def _prefill(self, request_id: str, prompt: list[int],
                       scope: CacheScope) -> str | None:
        """Run the prompt on a prefill worker; its worker id, or None when none could."""
        try:
            async for _ in self.prefill.generate(request_id, prompt, PREFILL_ONLY, scope):
                pass  # its token is discarded: the decode worker samples the first one again
        except EngineDeadError:
            self.audit.prefill_fallbacks += 1
            return None
        route = self.prefill.route_of(request_id)
        return route.worker if route else None

    async def abort(self, request_id: str) -> None:
        await asyncio.gather(self.prefill.abort(request_id), self.decode.abort(request_id),
                             return_exceptions=True)

    async def stats(self) -> EngineStats:
        """Both groups' counters summed (KV usage averaged); refreshes the transport audit."""
        decode = await self.decode.stats()
        try:
            prefill: EngineStats | None = await self.prefill.stats()
        except EngineDeadError:
            prefill = None
        self._refresh_audit(decode)
        if prefill is None:
            return decode
        return merge_stats([decode, prefill])

    def _refresh_audit(self, decode: EngineStats) -> None:
        """The transport's bytes and seconds: the decode workers' restores from its tier."""
        moved = [t for t in decode.tiers if t.tier == TRANSPORT_TIER]
        self.audit.restored_bytes = sum(t.restore_bytes for t in moved)
        self.audit.restore_seconds = sum(t.restore_seconds for t in moved)

    async def transport_bandwidth(self) -> float:
        """Bytes per second restored from the transport so far (fresh from the workers)."""
        await self.stats()
        return self.audit.bandwidth

    async def shutdown(self) -> None:
        await asyncio.gather(self.prefill.shutdown(), self.decode.shutdown(),
                             return_exceptions=True)
        self.close()

    def close(self) -> None:
        self.prefill.close()
        self.decode.close()
        if self._owned_dir and self.transport_dir:
            shutil.rmtree(Path(self.transport_dir), ignore_errors=True)
