"""The KV transport between disaggregated workers on one machine: a tier store in a directory
that every prefill and decode worker opens, under /dev/shm (memory) when the machine has it.

Unlike `DiskStore`, other processes write into it, so presence is asked of the file system, not
of an index built at start; and a tmpfs file needs no fsync. Each process bounds the bytes it
wrote itself (LRU by its own use); a block another process removed is a miss, recomputed.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from aruntime.kv.disk_store import evict_lru_files
from aruntime.kv.keys import BlockKey, KeyScheme
from aruntime.kv.scheme_file import claim_scheme_file
from aruntime.kv.tier_store import Stored, TierStore, encoded

__all__ = ["ShmStore", "default_transport_root"]

TRANSPORT_TIER = "transport"


def default_transport_root() -> Path:
    """Memory-backed when the machine has /dev/shm; a temporary directory otherwise."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class ShmStore(TierStore):
    name = TRANSPORT_TIER

    def __init__(self, root: Path, capacity_bytes: int, scheme: KeyScheme) -> None:
        if capacity_bytes <= 0:
            raise ValueError("a KV transport needs a positive capacity")
        self.root = Path(root)
        self.capacity = capacity_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        claim_scheme_file(self.root / "scheme.json", scheme)
        self._lock = threading.Lock()
        self._mine: OrderedDict[BlockKey, int] = OrderedDict()  # what this process wrote
        self._bytes = 0

    def _path(self, key: BlockKey) -> Path:
        return self.root / f"{key.hex()}.kv"

    def contains(self, key: BlockKey) -> bool:
        return self._path(key).exists()

    def get(self, key: BlockKey) -> Stored | None:
        try:
            blob = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        with self._lock:
            if key in self._mine:
                self._mine.move_to_end(key)
        return blob

    def put(self, key: BlockKey, blob: Stored) -> list[tuple[BlockKey, Stored]]:
        blob = encoded(blob)
        if len(blob) > self.capacity:
            return [(key, blob)]
        if self.contains(key):  # another worker sent it already: blocks are immutable
            return []
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, self._path(key))  # readers see a whole block or none
        with self._lock:
            self._bytes += len(blob) - self._mine.pop(key, 0)
            self._mine[key] = len(blob)
            self._bytes, evicted = evict_lru_files(self._mine, self._bytes, self.capacity,
                                                   self._path)
        return evicted

    def delete(self, key: BlockKey) -> None:
        with self._lock:
            self._bytes -= self._mine.pop(key, 0)
        self._path(key).unlink(missing_ok=True)

    def used_bytes(self) -> int:
        return self._bytes
