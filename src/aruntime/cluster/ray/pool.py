"""`aruntime serve --ray`: the pools of cluster/pool.py and cluster/disagg.py with their workers as
Ray actors (cluster/ray/actor.py), placed by role (cluster/ray/cluster.py). Routing, retries before
the first token, failing clearly after it, and the audits are the local pools' own.

`RayPool`: one role's workers (colocated, or the prefill or decode group). Ray actors publish no
KV events, so instead of a CacheDirectory the pool keeps `HeldPrefixes`, its own map of which
worker ran which prompt blocks; the routing audit measures how far that estimate is off.

`RayDisaggregatedPool`: prefill and decode groups handing KV over through Ray's object store
instead of shared memory: the prefill worker's `KVExport` is held by request id until that
request's decode worker takes it. The transport audit's bytes and seconds are those of the
handoffs: export and put on the prefill side, get and import on the decode side.

A dead actor fails what it was streaming, and every later call, with `EngineDeadError` naming
the worker; Ray reports the death to the pending calls, so nothing waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from typing import Any

import ray

from aruntime.cluster.disagg import DisaggregatedPool
from aruntime.cluster.pool import WorkerPool
from aruntime.cluster.ray.actor import EngineActor, KVExport, KVImport
from aruntime.cluster.ray.cluster import actor_options
from aruntime.engine.client import EngineClient, EngineDeadError
from aruntime.engine.config import EngineConfig
from aruntime.engine.core_client import EngineStartError
from aruntime.engine.core_proc import ModelInfo
from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.engine.sampling import SamplingParams
from aruntime.errors import first_line
from aruntime.kv.directory_index import DirectoryIndex, PrefixMatch
from aruntime.kv.events import BlockRemoved, BlockStored
from aruntime.kv.keys import NO_SCOPE, BlockKey, CacheScope, KeyScheme, request_keys

__all__ = ["HeldPrefixes", "RayDisaggregatedPool", "RayHandoffs", "RayPool", "RayWorker"]

CALL_TIMEOUT_S = 30.0  # an actor's stats, abort or shutdown


class HeldPrefixes:
    """Which worker holds which prompt blocks, as the pool believes: those of the prompts it
    ran, until it has run its device's worth of newer ones (its cache evicts the least recently
    used). Blocks of generated tokens and evictions under pressure are not seen."""

    def __init__(self) -> None:
        self.index = DirectoryIndex()
        self.scheme: KeyScheme | None = None
        self._held: dict[str, OrderedDict[BlockKey, None]] = {}
        self._capacity: dict[str, int] = {}

    def open(self, scheme: KeyScheme, capacity: dict[str, int]) -> HeldPrefixes:
        """Start tracking workers, each with its device's capacity in blocks."""
        self.scheme = scheme
        for worker, blocks in capacity.items():
            self.index.register(worker, scheme, math.inf, time.monotonic())
            self._held[worker], self._capacity[worker] = OrderedDict(), blocks
        return self

    def ran(self, worker: str, prompt: list[int], scope: CacheScope) -> None:
        if self.scheme is None or worker not in self._held:
            return
        keys = request_keys(self.scheme, prompt, scope)
        held = self._held[worker]
        for key in keys:
            held[key] = None
            held.move_to_end(key)
        evicted: list[bytes] = [held.popitem(last=False)[0]
                   for _ in range(len(held) - self._capacity[worker])]
        self.index.apply(worker, [BlockStored(list(keys), None, [], self.scheme.block_size,
                                              "device"), BlockRemoved(evicted, "device")])

    def longest_prefix(self, keys: list[BlockKey]) -> list[PrefixMatch]:
        return self.index.longest_prefix(keys)

    def close(self) -> None:
        pass


class RayHandoffs:
    """KV exports waiting for their decode worker, by request id, and the handoffs' totals."""

    def __init__(self) -> None:
        self._pending: dict[str, KVExport] = {}
        self.blocks = 0
        self.nbytes = 0
        self.seconds = 0.0

    def note(self, request_id: str, item: KVExport | KVImport) -> None:
        if isinstance(item, KVExport):
            self._pending[request_id] = item
        else:
            self.blocks += item.blocks
            self.nbytes += item.nbytes
            self.seconds += item.seconds

    def take(self, request_id: str) -> KVExport | None:
        return self._pending.pop(request_id, None)


class RayWorker(EngineClient):
    """The pool's handle on one `EngineActor` named `aruntime-<worker id>`, driven like an
    `MPClient`. A prefill worker's stream carries its export into `handoffs`; a decode worker
    takes the export of the request it is given from there."""

    def __init__(self, worker_id: str, role: str, config: EngineConfig, actor_class: Any,
                 options: dict[str, Any], held: HeldPrefixes, handoffs: RayHandoffs | None,
                 startup_timeout: float) -> None:
        self.worker_id = worker_id
        self.role = role
        self.config = config
        self.actor_class = actor_class  # ray.remote(EngineActor), made once per pool
        self.options = options
        self.held = held
        self.handoffs = handoffs
        self.startup_timeout = startup_timeout
        self.name = f"aruntime-{worker_id}"
        self.actor: Any = None  # a ray ActorHandle
        self.core_pid: int | None = None  # the actor's process, on its node
        self.placed_with: dict[str, float] = {}  # the resources Ray assigned it
        self._dead: str | None = None

    @property
    def is_alive(self) -> bool:
        return self._info is not None and self._dead is None

    def start(self) -> ModelInfo:
        if self._info is not None:
            return self._info
        try:
            self.actor = self.actor_class.options(name=self.name, **self.options).remote(
                self.config)
        except ValueError as exc:  # the name is taken in this job's namespace
            raise EngineStartError(f"Ray actor {self.name} cannot be created: {exc}") from None
        try:
            self._info, self.core_pid, self.placed_with = ray.get(
                self.actor.ready.remote(), timeout=self.startup_timeout)
        except ray.exceptions.GetTimeoutError:
            raise EngineStartError(f"Ray actor {self.name} was not ready within "
                                   f"{self.startup_timeout:.0f}s (it asks for "
                                   f"{self.options})") from None
        except ray.exceptions.RayError as exc:
            raise EngineStartError(f"Ray actor {self.name} failed to start: "
                                   f"{_cause(exc)}") from None
        return self._info

    def _check_alive(self) -> None:
        if self._info is None:
            raise RuntimeError(f"worker {self.worker_id} has not been started")
        if self._dead is not None:
            raise EngineDeadError(self._dead)

    def _error(self, exc: ray.exceptions.RayError) -> BaseException:
        """What a failed actor call raises here: EngineDeadError naming the worker when the
        actor or its engine died (and every call after it), else what the engine raised (a
        refused request's ValueError, say)."""
        cause = getattr(exc, "cause", None) or exc
        if not (isinstance(exc, ray.exceptions.RayActorError)
                or isinstance(cause, EngineDeadError)):
            return cause
        if self._dead is None:
            self._dead = (f"worker {self.worker_id} (Ray actor {self.name}) died: "
                          f"{first_line(cause)}")
        return EngineDeadError(self._dead)

    async def _call(self, ref: Any) -> Any:
        try:
            return await asyncio.wait_for(ref, CALL_TIMEOUT_S)
        except ray.exceptions.RayError as exc:
            raise self._error(exc) from None

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, scope: CacheScope = NO_SCOPE,
                       ) -> AsyncGenerator[RequestOutput, None]:
        self._check_alive()
        handoff = (self.handoffs.take(request_id)
                   if self.handoffs is not None and self.role == "decode" else None)
        stream = self.actor.generate.options(num_returns="streaming").remote(
            request_id, list(prompt_token_ids), params, scope, handoff,
            self.role == "prefill" and self.handoffs is not None)
        done = first = False
        try:
            async for ref in stream:
                item = await ref
                if isinstance(item, (KVExport, KVImport)):
                    assert self.handoffs is not None
                    self.handoffs.note(request_id, item)
                    continue
                if not first:
                    first = True
                    self.held.ran(self.worker_id, prompt_token_ids, scope)
                done = item.finished
                yield item
        except ray.exceptions.RayError as exc:
            done = True  # a dead actor holds nothing; a refused request was never added
            raise self._error(exc) from None
        finally:
            if not done and self.is_alive:
                self.actor.abort.remote(request_id)  # never waits, even under cancellation

    async def abort(self, request_id: str) -> None:
        if self.is_alive:
            await self._call(self.actor.abort.remote(request_id))

    async def stats(self) -> EngineStats:
        self._check_alive()
        stats: EngineStats = await self._call(self.actor.stats.remote())
        return stats

    async def shutdown(self) -> None:
        if self.is_alive:
            with contextlib.suppress(EngineDeadError, TimeoutError):
                await self._call(self.actor.shutdown.remote())
        self.close()

    def close(self) -> None:
        if self.actor is not None and ray.is_initialized():
            ray.kill(self.actor, no_restart=True)
        self.actor = None
        if self._dead is None:
            self._dead = "the engine was shut down"


def _cause(exc: ray.exceptions.RayError) -> str:
    """One line for why an actor could not start: the last line of Ray's report names the
    error raised in the actor's constructor."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


class RayPool(WorkerPool):
    """`WorkerPool` over Ray actors; `handoffs` is given to the groups of a disaggregated pool."""

    PLACEMENT = "ray"

    def __init__(self, config: EngineConfig, num_workers: int, policy: str = "kv", *,
                 seed: int | None = None, startup_timeout: float = 600.0,
                 role: str = "colocated", worker_prefix: str = "w",
                 handoffs: RayHandoffs | None = None) -> None:
        self.held = HeldPrefixes()
        self.handoffs = handoffs
        self._options = actor_options(role, num_workers, config.device)
        self._actor_class = ray.remote(EngineActor)
        super().__init__(config, num_workers, policy, seed=seed, startup_timeout=startup_timeout,
                         role=role, worker_prefix=worker_prefix)

    def _make_worker(self, worker_id: str, startup_timeout: float) -> RayWorker:
        return RayWorker(worker_id, self.role, self.config, self._actor_class, self._options,
                         self.held, self.handoffs, startup_timeout)

    def _open_directory(self, scheme: KeyScheme) -> HeldPrefixes:
        return self.held.open(scheme, {w: info.num_blocks for w, info in self.registry.items()})


class RayDisaggregatedPool(DisaggregatedPool):
    """`DisaggregatedPool` over Ray actors, the KV handed over through Ray's object store."""

    def __init__(self, config: EngineConfig, prefill_workers: int, decode_workers: int,
                 policy: str = "kv", *, seed: int | None = None,
                 startup_timeout: float = 600.0) -> None:
        self.handoffs = RayHandoffs()
        super().__init__(config, prefill_workers, decode_workers, policy, seed=seed,
                         startup_timeout=startup_timeout)

    def _transport_config(self, config: EngineConfig, transport_dir: str | None) -> EngineConfig:
        """Every worker stages the blocks Ray carries in its KV connector (kv/staged_store.py)."""
        self._owned_dir, self.transport_dir = False, None
        return dataclasses.replace(config, kv=dataclasses.replace(config.kv, staged=True))

    def _group(self, config: EngineConfig, workers: int, policy: str, role: str,
               seed: int | None, startup_timeout: float) -> RayPool:
        return RayPool(config, workers, policy, seed=seed, role=role, worker_prefix=role[0],
                       startup_timeout=startup_timeout, handoffs=self.handoffs)

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams, scope: CacheScope = NO_SCOPE,
                       ) -> AsyncGenerator[RequestOutput, None]:
        stream = super().generate(request_id, prompt_token_ids, params, scope)
        try:
            async for out in stream:
                yield out
        finally:
            await stream.aclose()
            self.handoffs.take(request_id)  # one no decode worker took frees its object

    def _refresh_audit(self, decode: EngineStats) -> None:
        self.audit.restored_bytes = self.handoffs.nbytes
        self.audit.restore_seconds = self.handoffs.seconds
