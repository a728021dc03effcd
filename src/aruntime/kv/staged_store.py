"""Blocks a transport outside the engine hands over: the top store of a worker whose KV travels
through Ray's object store (cluster/ray/actor.py).

A decode worker stages the encoded blocks a prefill worker exported before it adds their
request; its scheduler then finds them through the KV connector like any other store's and the
load checks each against its key. On a prefill worker, `save` fills this store and `take` hands
a prompt's blocks to the object store. Bounded by bytes, least recently used out first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from aruntime.kv.block_format import StaleBlockError, decode
from aruntime.kv.keys import BlockKey, KeyScheme
from aruntime.kv.shm_store import TRANSPORT_TIER
from aruntime.kv.tier_store import Stored, TierStore, encoded

__all__ = ["StagedStore"]


class StagedStore(TierStore):
    """Thread-safe: the engine thread reads and saves, a transport's thread stages and takes."""

    name = TRANSPORT_TIER

    def __init__(self, capacity_bytes: int, scheme: KeyScheme) -> None:
        if capacity_bytes <= 0:
            raise ValueError("a staged KV store needs a positive capacity")
        self.capacity = capacity_bytes
        self.scheme = scheme
        self._blobs: OrderedDict[BlockKey, bytes] = OrderedDict()
        self._bytes = 0
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
        blob = encoded(blob)
        if len(blob) > self.capacity:
            return [(key, blob)]
        with self._lock:
            self._bytes += len(blob) - len(self._blobs.pop(key, b""))
            self._blobs[key] = blob
            evicted: list[tuple[BlockKey, Stored]] = []
            while self._bytes > self.capacity:
                victim, old = self._blobs.popitem(last=False)
                self._bytes -= len(old)
                evicted.append((victim, old))
            return evicted

    def delete(self, key: BlockKey) -> None:
        with self._lock:
            self._bytes -= len(self._blobs.pop(key, b""))

    def used_bytes(self) -> int:
        return self._bytes

    def stage(self, keys: list[BlockKey], blobs: list[bytes]) -> int:
        """Hold another worker's blocks of a prompt, in order, up to the first that is not the
        block its key names under this worker's scheme (another model, tenant or a corrupt
        copy). Returns how many are held. Blocks evicted meanwhile are recomputed, never lost
        to anyone: they are a cache."""
        held = 0
        for key, blob in zip(keys, blobs, strict=False):
            try:
                decode(blob, self.scheme, key)
            except StaleBlockError:
                break
            self.put(key, blob)
            held += 1
        return held

    def take(self, keys: list[BlockKey]) -> list[bytes]:
        """The blobs of `keys` this store holds, in order up to the first it lacks, removed from
        it: a prefill worker hands them over once."""
        out = []
        with self._lock:
            for key in keys:
                blob = self._blobs.pop(key, None)
                if blob is None:
                    break
                self._bytes -= len(blob)
                out.append(blob)
        return out
