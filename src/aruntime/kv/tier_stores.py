"""Where KV blocks live beyond the device: host RAM, local disk, Redis. One small interface;
each store holds encoded blocks (see kv_format) by key and is bounded by bytes.

Stores are called from the engine thread and from the tier writer thread, so each has a lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import tempfile
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aruntime.kv.block_format import KeySchemeMismatchError, scheme_descriptor
from aruntime.kv.keys import BlockKey, KeyScheme
from aruntime.timeutil import utc_now

logger = logging.getLogger(__name__)


class TierStore(ABC):
    """A bounded map from block key to block. Stores outside this process hold encoded blocks
    (`encoded = True`: checked on every read); host RAM holds payloads as they are."""

    name: str
    encoded: bool = True

    @abstractmethod
    def contains(self, key: BlockKey) -> bool:
        """Cheap presence check, used by the scheduler to count prefix hits."""

    def contains_many(self, keys: list[BlockKey]) -> list[bool]:
        """`contains` for a whole prefix at once; a remote store answers in one round trip."""
        return [self.contains(k) for k in keys]

    @abstractmethod
    def get(self, key: BlockKey) -> bytes | None:
        """The stored blob, or None. Counts as a use for LRU order."""

    @abstractmethod
    def put(self, key: BlockKey, blob: bytes) -> list[tuple[BlockKey, bytes]]:
        """Store a blob; returns what was evicted to make room (for demotion downwards)."""

    @abstractmethod
    def delete(self, key: BlockKey) -> None:
        """Drop a block (a stale one, typically)."""

    def used_bytes(self) -> int:
        return 0

    def close(self) -> None:
        """Release connections and files."""


class HostStore(TierStore):
    """Host RAM, LRU, bounded by bytes. Pinned keys are never evicted. It lives in this process,
    so it holds raw payloads: no encoding or checksum on the restore path."""

    name = "host"
    encoded = False

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._blobs: OrderedDict[BlockKey, Any] = OrderedDict()
        self._bytes = 0
        self._pinned: set[BlockKey] = set()
        self._lock = threading.Lock()

    def contains(self, key: BlockKey) -> bool:
        return key in self._blobs

    def get(self, key: BlockKey) -> Any:
        with self._lock:
            blob = self._blobs.get(key)
            if blob is not None:
                self._blobs.move_to_end(key)
            return blob

    def put(self, key: BlockKey, blob: Any) -> list[tuple[BlockKey, Any]]:
        if _size(blob) > self.capacity:
            return [(key, blob)]
        with self._lock:
            if key in self._blobs:
                self._blobs.move_to_end(key)
                return []
            self._blobs[key] = blob
            self._bytes += _size(blob)
            return self._evict_locked()

    def _evict_locked(self) -> list[tuple[BlockKey, bytes]]:
        evicted = []
        while self._bytes > self.capacity:
            # the least recently used unpinned block: pinned ones are few, so this stays short
            victim = next((k for k in self._blobs if k not in self._pinned), None)
            if victim is None:
                break
            blob = self._blobs.pop(victim)
            self._bytes -= _size(blob)
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
                self._bytes -= _size(blob)

    def used_bytes(self) -> int:
        return self._bytes


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

    def put(self, key: BlockKey, blob: bytes) -> list[tuple[BlockKey, bytes]]:
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


class RedisStore(TierStore):
    """A Redis server shared by workers and machines. Keys live under a prefix that also holds
    the announced scheme; capacity is the server's own (maxmemory with an LRU policy)."""

    name = "redis"

    def __init__(self, url: str, scheme: KeyScheme, prefix: str = "aruntime:kv",
                 timeout_s: float = 2.0) -> None:
        import redis  # optional dependency: only a Redis tier needs it

        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s)
        self.prefix = prefix
        descriptor = json.dumps(scheme_descriptor(scheme), sort_keys=True)
        self.client.set(f"{prefix}:scheme", descriptor, nx=True)
        announced = self.client.get(f"{prefix}:scheme")
        if announced is not None and announced.decode() != descriptor:
            raise KeySchemeMismatchError(
                f"Redis {url} prefix {prefix!r} holds blocks of scheme {announced.decode()}, "
                f"not {descriptor}")

    def _k(self, key: BlockKey) -> str:
        return f"{self.prefix}:{key.hex()}"

    def contains(self, key: BlockKey) -> bool:
        return bool(self.client.exists(self._k(key)))

    def contains_many(self, keys: list[BlockKey]) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(self._k(key))
        return [bool(n) for n in pipe.execute()]

    def get(self, key: BlockKey) -> bytes | None:
        blob = self.client.get(self._k(key))
        return bytes(blob) if blob is not None else None

    def put(self, key: BlockKey, blob: bytes) -> list[tuple[BlockKey, bytes]]:
        self.client.set(self._k(key), blob)
        return []

    def delete(self, key: BlockKey) -> None:
        self.client.delete(self._k(key))

    def close(self) -> None:
        self.client.close()


def evict_lru_files(
    index: OrderedDict[BlockKey, int], used: int, capacity: int,
    path_of: Callable[[BlockKey], Path],
) -> tuple[int, list[tuple[BlockKey, bytes]]]:
    """Drop least recently used block files until `used` fits `capacity`; returns the new
    usage and what was dropped (for demotion). The caller holds its lock."""
    evicted = []
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


def _size(item: Any) -> int:
    """Bytes held: an encoded blob's length, or a payload's data length."""
    return len(item) if isinstance(item, bytes | bytearray) else len(item.data)


def claim_scheme_file(path: Path, scheme: KeyScheme) -> None:
    """Announce `scheme` in `path`, or check the scheme already there. Workers starting together
    race for it: the first link wins, the others compare (a rename would let the last win).

    Metadata that cannot be read (damaged bytes, not a scheme) is no reason not to serve: the
    directory's blocks are set aside with it (`quarantine_blocks`) and the tier starts empty.
    A readable scheme of another model is a KeySchemeMismatchError: its blocks may be wanted."""
    descriptor = scheme_descriptor(scheme)
    for _ in range(3):  # another worker may quarantine or create the file between our looks
        if not path.exists() and _link_new(path, descriptor):
            return
        found = _read_descriptor(path)
        if found is _MISSING:
            continue
        if found is None:
            quarantine_blocks(path)
            continue
        if found != descriptor:
            raise KeySchemeMismatchError(
                f"{path.parent} holds KV blocks of scheme {found}, not {descriptor}; "
                "use another --kv-disk-dir for this model")
        return
    raise KeySchemeMismatchError(f"{path}: the scheme file keeps changing under this process")


_MISSING: Any = object()


def _link_new(path: Path, descriptor: dict[str, object]) -> bool:
    """Create `path` holding `descriptor` unless it exists; whether this call created it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".scheme-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(descriptor, sort_keys=True))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _read_descriptor(path: Path) -> Any:
    """The scheme announced in `path`; None when it cannot be read as one, _MISSING when the
    file is gone."""
    try:
        found = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return _MISSING
    except (UnicodeDecodeError, ValueError):
        return None
    fields = {f.name for f in dataclasses.fields(KeyScheme)}
    return found if isinstance(found, dict) and set(found) == fields else None


def quarantine_blocks(scheme_path: Path) -> Path | None:
    """Move an unreadable scheme file and every block beside it into a new `quarantine-*`
    directory there (nothing is deleted: an operator may look). None when another process
    moved the scheme file first."""
    root = scheme_path.parent
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    dest = root / f"quarantine-{stamp}-{os.getpid()}-{secrets.token_hex(3)}"
    dest.mkdir()
    try:
        os.rename(scheme_path, dest / scheme_path.name)
    except FileNotFoundError:
        dest.rmdir()
        return None
    moved = 0
    for block in root.glob("*.kv"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(block, dest / block.name)
            moved += 1
    logger.warning("%s is unreadable: set it and %d KV blocks aside in %s; this tier starts "
                   "empty", scheme_path, moved, dest)
    return dest
