"""Blocks a transport outside the engine hands over: the top store of a worker whose KV travels
through Ray's object store (cluster/ray/actor.py).

A decode worker stages the encoded blocks a prefill worker exported (`TierConnector.export`)
before it adds their request; its scheduler then finds them through the KV connector like any
other store's and the load checks each against its key. It takes nothing else: the engine's own
computed blocks are not written through to it. Bounded by bytes, least recently used out first.
"""

from __future__ import annotations

from aruntime.kv.block_format import StaleBlockError, decode
from aruntime.kv.host_store import HostStore
from aruntime.kv.keys import BlockKey, KeyScheme
from aruntime.kv.shm_store import TRANSPORT_TIER
from aruntime.kv.tier_store import Stored, encoded

__all__ = ["StagedStore"]


class StagedStore(HostStore):
    """An in-memory LRU like host RAM's, of encoded blocks (checked on every read). Thread-safe:
    the engine thread reads and saves, a transport's thread stages and takes."""

    name = TRANSPORT_TIER
    encoded = True
    write_through = False

    def __init__(self, capacity_bytes: int, scheme: KeyScheme) -> None:
        if capacity_bytes <= 0:
            raise ValueError("a staged KV store needs a positive capacity")
        super().__init__(capacity_bytes)
        self.scheme = scheme

    def put(self, key: BlockKey, blob: Stored) -> list[tuple[BlockKey, Stored]]:
        return super().put(key, encoded(blob))

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
