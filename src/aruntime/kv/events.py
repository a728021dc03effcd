"""KV cache events, in the shape vLLM publishes them: a block was stored, blocks were removed,
everything was cleared — each tagged with the tier (medium) that holds the blocks.

Producers (the device block pool, the tiers) append to a thread-safe EventBuffer; the engine
drains it once per step into a KVEventBatch for whatever publisher is attached.
"""

from __future__ import annotations

import threading
import time

import msgspec

MEDIA = ("device", "host", "disk", "redis")


class BlockStored(msgspec.Struct, tag=True):
    block_hashes: list[bytes]
    parent_block_hash: bytes | None
    token_ids: list[int]
    block_size: int
    medium: str


class BlockRemoved(msgspec.Struct, tag=True):
    block_hashes: list[bytes]
    medium: str


class AllBlocksCleared(msgspec.Struct, tag=True):
    medium: str | None = None  # None: every tier of the worker


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventBatch(msgspec.Struct):
    ts: float  # time.time() when the batch was drained
    worker_id: str
    events: list[KVEvent]


class EventBuffer:
    """Collects events from the step loop and the tier writer thread."""

    def __init__(self) -> None:
        self._events: list[KVEvent] = []
        self._lock = threading.Lock()

    def emit(self, event: KVEvent) -> None:
        with self._lock:
            self._events.append(event)

    def drain(self, worker_id: str) -> KVEventBatch | None:
        with self._lock:
            events, self._events = self._events, []
        return KVEventBatch(time.time(), worker_id, events) if events else None
