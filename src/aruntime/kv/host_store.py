"""Host RAM as a KV tier."""

from __future__ import annotations

import threading
from collections import OrderedDict

from aruntime.kv.keys import BlockKey
from aruntime.kv.tier_store import Stored, TierStore, stored_size


class HostStore(TierStore):
    """Host RAM, LRU, bounded by bytes. Pinned keys are never evicted. It lives in this process,
    so it holds raw payloads: no encoding or checksum on the restore path."""

    name = "host"
    encoded = False

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._blobs: OrderedDict[BlockKey, Stored] = OrderedDict()
        self._bytes = 0
        self._pinned: set[BlockKey] = set()
        self._lock = threading.Lock()

    def contains(self, key: BlockKey) -> bool:
        return key in self._blobs

    def get(self, key: BlockKey) -> Stored | None:
        with self._lock:
            blob = self._blobs.get(key)
            if blob is not None:
                self._blobs.move_to_end(key)
            return blob

    def put(self, key: BlockKey, blob: Stored) -> list[tuple[BlockKey, Stored]]:
        if stored_size(blob) > self.capacity:
            return [(key, blob)]
        with self._lock:
            if key in self._blobs:
                self._blobs.move_to_end(key)
                return []
            self._blobs[key] = blob
            self._bytes += stored_size(blob)
            return self._evict_locked()

    def _evict_locked(self) -> list[tuple[BlockKey, Stored]]:
        evicted: list[tuple[BlockKey, Stored]] = []
        while self._bytes > self.capacity:
            # the least recently used unpinned block: pinned ones are few, so this stays short
            victim = next((k for k in self._blobs if k not in self._pinned), None)
            if victim is None:
                break
            blob = self._blobs.pop(victim)
            self._bytes -= stored_size(blob)
            evicted.append((victim, blob))
        return evicted

    def pin(self, key: BlockKey) -> None:
        self._pinned.add(key)

    def unpin(self, key: BlockKey) -> None:
        self._pinned.discard(key)

    def delete(self, key: BlockKey) -> None:
        with self._lock:
            blob = self._blobs.pop(key, None)
            if blob is not None:
                self._bytes -= stored_size(blob)

    def used_bytes(self) -> int:
        return self._bytes
