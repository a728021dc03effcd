"""The Ray actor behind each worker of `aruntime serve --ray`: an LLMEngine stepped on a thread
of the actor's process (`InprocClient`), its outputs streamed back through a Ray streaming
generator, and the KV handoff of disaggregated serving through Ray's object store.

A prefill actor runs the prompt for one token, has its KV connector encode the prompt's full
device blocks (kv/block_format.py: key, layout and checksum with each) and `ray.put`s them; a
`KVExport` holding the ObjectRef comes just before the finishing output. A decode actor given
that export fetches the blocks and stages them in its own KV connector before it adds the
request, so its prefix lookup loads them like any store's: it computes only the last partial
block and streams every token. The blocks go from node to node through the object store; the
pool only passes the ref on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import ray

from aruntime.cluster.ray.ranks import RayRanks
from aruntime.engine.config import EngineConfig
from aruntime.engine.core_client import InprocClient
from aruntime.engine.core_proc import ModelInfo
from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.engine.sampling import SamplingParams
from aruntime.errors import first_line
from aruntime.kv.keys import CacheScope

__all__ = ["EngineActor", "KVExport", "KVImport"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KVExport:
    """A prefill's blocks in the object store. The ref sits in a list so that Ray hands it on
    as a ref, not as the value, when the export is an argument of the decode call."""

    refs: list[ray.ObjectRef]
    blocks: int
    nbytes: int
    seconds: float  # reading the device blocks, encoding them and putting them


@dataclass(frozen=True, slots=True)
class KVImport:
    """What a decode actor took from an export (before its first output)."""

    blocks: int  # the prompt's leading blocks now held here (staged, or on the device)
    nbytes: int  # bytes fetched from the object store
    seconds: float  # the whole handoff: the export's seconds, then the get and the import


class EngineActor:
    """One worker. Ray runs its async methods on one event loop, the one InprocClient binds."""

    def __init__(self, config: EngineConfig) -> None:
        # a parallel group's other ranks: actors too, placed by Ray
        launcher = RayRanks() if config.ranks > 1 else None
        self.client = InprocClient(config, launcher)
        self.info = self.client.start()

    def ready(self) -> tuple[ModelInfo, int, dict[str, float]]:
        """The model, this process's id, and the resources Ray placed this actor with."""
        return self.info, os.getpid(), ray.get_runtime_context().get_assigned_resources()

    async def generate(
        self, request_id: str, prompt: list[int], params: SamplingParams, scope: CacheScope,
        handoff: KVExport | None, export: bool,
    ) -> AsyncGenerator[RequestOutput | KVExport | KVImport, None]:
        """The request's outputs; first a `KVImport` when given a `handoff`, and a `KVExport`
        just before the finishing output when asked to `export`."""
        if handoff is not None:
            yield await self._import(prompt, handoff, scope)
        async for out in self.client.generate(request_id, prompt, params, scope):
            if out.finished and export and out.finish_reason != "abort":
                yield await self._export(prompt, scope)
            yield out

    async def _export(self, prompt: list[int], scope: CacheScope) -> KVExport:
        """The prompt's blocks, encoded by this engine's KV connector, into the object store."""
        start = time.perf_counter()
        blobs = await self.client.call(lambda engine: engine.export_prefix(prompt, scope))
        ref = ray.put(blobs)
        return KVExport([ref], len(blobs), sum(map(len, blobs)), time.perf_counter() - start)

    async def _import(self, prompt: list[int], handoff: KVExport, scope: CacheScope) -> KVImport:
        """Fetch an export and stage it in this engine's KV connector, before the request is
        added: its prefix lookup then loads the blocks from there."""
        start = time.perf_counter()
        try:
            blobs: list[bytes] = await handoff.refs[0]
        except ray.exceptions.RayError as exc:  # e.g. its owner, the prefill actor, died
            logger.warning("KV handoff lost, prefilling here: %s", first_line(exc))
            return KVImport(0, 0, 0.0)
        blocks = await self.client.call(
            lambda engine: engine.import_prefix(prompt, blobs, scope))
        return KVImport(blocks, sum(map(len, blobs)),
                        handoff.seconds + time.perf_counter() - start)

    async def abort(self, request_id: str) -> None:
        await self.client.abort(request_id)

    async def stats(self) -> EngineStats:
        return await self.client.stats()

    async def shutdown(self) -> None:
        await self.client.shutdown()
