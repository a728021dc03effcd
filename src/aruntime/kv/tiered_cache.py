"""KV blocks in tiers below the device: host RAM → local disk → Redis, behind one object.

Writes enter at the top (write-through from the device after a block is computed); what a tier
evicts is demoted to the next one by a writer thread, so slow disk and network writes stay off
the step loop. A read searches the tiers in order, checks the block (kv_format), drops a stale
copy wherever it is found, and promotes a good lower-tier copy back to host RAM.
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from aruntime.kv.block_format import BlockPayload, StaleBlockError, decode, encode
from aruntime.kv.events import BlockRemoved, BlockStored, EventBuffer
from aruntime.kv.keys import BlockKey, KeyScheme
from aruntime.kv.tier_store import Stored, TierStore

logger = logging.getLogger(__name__)

LOAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


@dataclass
class TierCounters:
    hits: int = 0
    misses: int = 0
    stale: int = 0  # corrupt, truncated or foreign blocks found and dropped
    evictions: int = 0
    stored_bytes: int = 0
    load_seconds_sum: float = 0.0
    load_buckets: list[int] = field(default_factory=lambda: [0] * (len(LOAD_BUCKETS_S) + 1))

    def observe_load(self, seconds: float) -> None:
        self.load_seconds_sum += seconds
        self.load_buckets[bisect.bisect_left(LOAD_BUCKETS_S, seconds)] += 1


class TieredKVCache:
    def __init__(self, scheme: KeyScheme, stores: list[TierStore],
                 events: EventBuffer | None = None) -> None:
        if not stores:
            raise ValueError("a tiered cache needs at least one store")
        self.scheme = scheme
        self.events = events
        self.stores = stores
        self.counters = {s.name: TierCounters() for s in stores}
        # where computed and promoted blocks enter: the first store that takes them, if any
        self._top = next((i for i, s in enumerate(stores) if s.write_through), None)
        self._demotions: queue.Queue[tuple[int, BlockKey, Stored] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="kv-tier-writer", daemon=True)
        self._writer.start()

    def put(self, key: BlockKey, payload: BlockPayload) -> None:
        """Write-through into the top tier that takes it; its evictions go down on the writer
        thread."""
        if self._top is None or self.stores[self._top].contains(key):
            return
        self._store(self._top, key, payload)

    def _store(self, level: int, key: BlockKey, item: Stored) -> None:
        """Put a payload or an encoded blob into a tier, converting to what the tier holds."""
        store = self.stores[level]
        if store.encoded and isinstance(item, BlockPayload):
            item = encode(self.scheme, key, item)
        elif not store.encoded and not isinstance(item, BlockPayload):
            item = decode(item, self.scheme, key)
        evicted = store.put(key, item)
        self.counters[store.name].stored_bytes = store.used_bytes()
        if self.events is not None:
            stored: list[bytes] = [] if any(v == key for v, _ in evicted) else [key]
            if stored:
                self.events.emit(BlockStored(stored, None, [], self.scheme.block_size, store.name))
            if evicted:
                self.events.emit(BlockRemoved([v for v, _ in evicted], store.name))
        for victim, victim_blob in evicted:
            self.counters[store.name].evictions += 1
            if level + 1 < len(self.stores):
                self._demotions.put((level + 1, victim, victim_blob))

    def _write_loop(self) -> None:
        while (item := self._demotions.get()) is not None:
            try:
                self._store(*item)
            except Exception:  # a failing lower tier loses a cached copy, never a request
                logger.exception("demotion into %s failed", self.stores[item[0]].name)
            finally:
                self._demotions.task_done()
        self._demotions.task_done()

    def flush(self) -> None:
        """Wait until every pending demotion is written."""
        self._demotions.join()

    def available(self, keys: list[BlockKey]) -> int:
        """How many leading keys some tier holds (presence only; reads check the content)."""
        missing = list(range(len(keys)))  # positions no tier asked so far holds
        for store in self.stores:  # one call per tier: a remote tier is one round trip
            if not missing:
                break
            try:
                present = store.contains_many([keys[i] for i in missing])
            except Exception:  # an unreachable tier is a miss, not a failure
                logger.exception("presence check in %s failed", store.name)
                continue
            missing = [i for i, hit in zip(missing, present, strict=True) if not hit]
        return missing[0] if missing else len(keys)

    def get(self, key: BlockKey) -> tuple[BlockPayload, str] | None:
        """The block and the name of the tier it came from, or None."""
        for level, store in enumerate(self.stores):
            counters = self.counters[store.name]
            start = time.perf_counter()
            try:
                blob = store.get(key)
            except Exception:  # an unreachable tier is a miss, not a failure
                logger.exception("reading %s from %s failed", key.hex()[:16], store.name)
                blob = None
            if blob is None:
                counters.misses += 1
                continue
            try:
                payload = blob if isinstance(blob, BlockPayload) else decode(blob, self.scheme, key)
            except StaleBlockError as exc:
                counters.stale += 1
                logger.warning("dropping a stale KV block %s from %s: %s", key.hex()[:16],
                               store.name, exc)
                store.delete(key)
                if self.events is not None:
                    self.events.emit(BlockRemoved([key], store.name))
                continue
            counters.hits += 1
            counters.observe_load(time.perf_counter() - start)
            if self._top is not None and level > self._top:  # the next use finds it on top
                self._store(self._top, key, payload)
            return payload, store.name
        return None

    def close(self) -> None:
        self._demotions.put(None)
        self._writer.join(timeout=10)
        for store in self.stores:
            store.close()
