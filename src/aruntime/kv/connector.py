"""The KV connector: the one seam between an engine's device blocks and every store beyond them,
split by role as vLLM's KVConnectorBase_V1 is.

- The scheduler side answers a question about keys: how many of a prompt's next blocks some
  store holds (`available`). It never touches tensors.
- The worker side moves block contents: `load` fills device blocks from the stores, `save` offers
  computed device blocks to them. It reaches the device only through `DeviceBlocks`, so this
  package needs no engine.

Its implementation is `TierConnector` (kv/tier_connector.py) over a stack of stores: host RAM,
local disk and Redis (the tiers), and on a disaggregated worker the transport on top — the
shared-memory directory between workers of one machine (`ShmStore`), or the blocks Ray's object
store carried in (`StagedStore`). Every path that moves KV in or out of a device goes through it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from aruntime.kv.block_format import BlockPayload
from aruntime.kv.keys import BlockKey


class DeviceBlocks(Protocol):
    """The engine's KV memory as the worker side sees it (the model runner)."""

    def read_blocks(self, block_ids: list[int]) -> list[BlockPayload]:
        """These blocks' KV, copied to host memory (in one go: a parallel group's is a round
        trip to every rank)."""
        ...

    def write_blocks(self, block_ids: list[int], payloads: list[BlockPayload]) -> None:
        """Copy payloads into device blocks; a payload of another layout raises
        StaleBlockError and writes nothing."""
        ...


class KVConnectorScheduler(ABC):
    """Called by the scheduler when it places a waiting request whose device prefix hit ended."""

    @abstractmethod
    def available(self, keys: list[BlockKey]) -> int:
        """How many of `keys`, from the first, some store holds (presence only: a load checks
        the contents). Changes nothing."""


class KVConnectorWorker(ABC):
    """Called on the engine's thread, between steps, with device block ids the scheduler owns."""

    @abstractmethod
    def load(self, keys: list[BlockKey], block_ids: list[int]) -> int:
        """Fill `block_ids[i]` with `keys[i]`'s KV, in order, stopping at the first block that
        is missing or stale (it is dropped from its store). Returns how many were filled."""

    @abstractmethod
    def save(self, blocks: list[tuple[int, BlockKey]]) -> None:
        """Offer computed device blocks (id, key) to the stores. Their KV is final: blocks are
        immutable once full. May return before slow stores are written."""


class KVConnector(KVConnectorScheduler, KVConnectorWorker):
    """Both roles in one object, for an engine whose scheduler and worker share a process."""
