"""Local disk as a KV tier: one file per block, written atomically."""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from aruntime.kv.keys import BlockKey, KeyScheme
from aruntime.kv.scheme_file import claim_scheme_file
from aruntime.kv.tier_store import Stored, TierStore, encoded


class DiskStore(TierStore):
    """One file per block under a directory, written atomically (temp file, fsync, rename),
    LRU by last use, bounded by bytes. The directory announces its key scheme in scheme.json;
    opening it with another scheme is a KeySchemeMismatchError."""

    name = "disk"

    def __init__(self, root: Path, capacity_bytes: int, scheme: KeyScheme) -> None:
        self.root = Path(root)
        self.capacity = capacity_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        claim_scheme_file(self.root / "scheme.json", scheme)
        self._lock = threading.Lock()
        self._index: OrderedDict[BlockKey, int] = OrderedDict()  # key -> size, LRU order
        files = sorted(self.root.glob("*.kv"), key=lambda f: f.stat().st_mtime)
        for file in files:  # resume what an earlier process left, oldest first
            self._index[BlockKey(bytes.fromhex(file.stem))] = file.stat().st_size
        self._bytes = sum(self._index.values())

    def _path(self, key: BlockKey) -> Path:
        return self.root / f"{key.hex()}.kv"

    def contains(self, key: BlockKey) -> bool:
        return key in self._index

    def get(self, key: BlockKey) -> bytes | None:
        with self._lock:
            if key not in self._index:
                return None
            self._index.move_to_end(key)
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            self.delete(key)
            return None

    def put(self, key: BlockKey, blob: Stored) -> list[tuple[BlockKey, Stored]]:
        blob = encoded(blob)
        if len(blob) > self.capacity:
            return [(key, blob)]
        with self._lock:
            if key in self._index:
                self._index.move_to_end(key)
                return []
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(key))
        with self._lock:
            self._index[key] = len(blob)
            self._bytes += len(blob)
            self._bytes, evicted = evict_lru_files(self._index, self._bytes, self.capacity,
                                                   self._path)
        return evicted

    def delete(self, key: BlockKey) -> None:
        with self._lock:
            size = self._index.pop(key, None)
            if size is not None:
                self._bytes -= size
        self._path(key).unlink(missing_ok=True)

    def used_bytes(self) -> int:
        return self._bytes


def evict_lru_files(
    index: OrderedDict[BlockKey, int], used: int, capacity: int,
    path_of: Callable[[BlockKey], Path],
) -> tuple[int, list[tuple[BlockKey, Stored]]]:
    """Drop least recently used block files until `used` fits `capacity`; returns the new
    usage and what was dropped (for demotion). The caller holds its lock."""
    evicted: list[tuple[BlockKey, Stored]] = []
    while used > capacity and index:
        victim, size = index.popitem(last=False)
        used -= size
        path = path_of(victim)
        try:
            evicted.append((victim, path.read_bytes()))
            path.unlink()
        except FileNotFoundError:
            pass
    return used, evicted
