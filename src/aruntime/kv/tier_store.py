"""Where KV blocks live beyond the device: one small interface for every store (host RAM, local
disk, Redis, the transports). Each holds blocks by key and is bounded by bytes.

Stores are called from the engine thread and from the tier writer thread, so each has a lock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from aruntime.kv.block_format import BlockPayload
from aruntime.kv.keys import BlockKey

# An encoded block (kv/block_format.py: checked on every read) or, in host RAM, the payload as is.
Stored = bytes | BlockPayload


def encoded(blob: Stored) -> bytes:
    """The bytes a store outside this process holds: it is only ever given encoded blocks."""
    if not isinstance(blob, bytes):
        raise TypeError("a store of encoded blocks was given a raw payload")
    return blob


def stored_size(item: Stored) -> int:
    """Bytes held: an encoded block's length, or a payload's data length."""
    return len(item) if isinstance(item, bytes) else len(item.data)


class TierStore(ABC):
    """A bounded map from block key to block. Stores outside this process hold encoded blocks
    (`encoded = True`: checked on every read); host RAM holds payloads as they are."""

    name: str
    encoded: bool = True
    # Takes the engine's computed blocks (write-through) and promoted ones. A store that only
    # holds what a transport hands in (the staged store) does not.
    write_through: bool = True

    @abstractmethod
    def contains(self, key: BlockKey) -> bool:
        """Cheap presence check, used by the scheduler to count prefix hits."""

    def contains_many(self, keys: list[BlockKey]) -> list[bool]:
        """`contains` for a whole prefix at once; a remote store answers in one round trip."""
        return [self.contains(k) for k in keys]

    @abstractmethod
    def get(self, key: BlockKey) -> Stored | None:
        """The stored block, or None. Counts as a use for LRU order."""

    @abstractmethod
    def put(self, key: BlockKey, blob: Stored) -> list[tuple[BlockKey, Stored]]:
        """Store a block (encoded bytes, or a payload where `encoded` is False); returns what
        was evicted to make room (for demotion downwards)."""

    @abstractmethod
    def delete(self, key: BlockKey) -> None:
        """Drop a block (a stale one, typically)."""

    def used_bytes(self) -> int:
        return 0

    def close(self) -> None:
        """Release connections and files."""
