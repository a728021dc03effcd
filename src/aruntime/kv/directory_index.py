"""What a cache directory knows: which worker holds which block key in which tier, and for how
long it is trusted to (its lease). No sockets here; CacheDirectory feeds it from KV events.

A stored block is immutable, so a key names one content forever: the index only tracks where
copies are. Each copy has an owner — the worker that announced it — and lives as long as the
owner's lease, which any message from the owner renews. Redis-tier copies are shared, so they
belong to the pseudo-worker "redis", have no lease, and any worker may load them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import msgspec

from aruntime.kv.block_format import KeySchemeMismatchError, scheme_descriptor
from aruntime.kv.events import MEDIA, AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from aruntime.kv.keys import BlockKey, KeyScheme

logger = logging.getLogger(__name__)

SHARED_WORKER = "redis"
TIER_RANK = {medium: rank for rank, medium in enumerate(MEDIA)}  # device first: cheapest to use


def _rank(tier: str) -> int:
    return TIER_RANK.get(tier, len(TIER_RANK))


class PrefixMatch(msgspec.Struct, frozen=True):
    """How much of a prompt's prefix one worker can serve from its cache."""

    worker_id: str
    tier: str  # the best tier among the matched blocks
    num_blocks: int  # leading keys held, in any tier
    by_tier: dict[str, int] = {}  # matched blocks by the best tier holding each


@dataclass(slots=True)
class _Worker:
    lease_s: float
    expires_at: float  # time.monotonic()


class DirectoryIndex:
    """Thread-safe: the directory's loop applies events while queries read."""

    def __init__(self, scheme: KeyScheme | None = None) -> None:
        self.scheme = scheme  # pinned by the first worker when not given
        self.lock = threading.Lock()
        self._holders: dict[bytes, dict[str, set[str]]] = {}  # key -> owner -> tiers
        self._owned: dict[str, set[bytes]] = {}  # owner -> keys, to drop an owner at once
        self._workers: dict[str, _Worker] = {}

    def register(self, worker_id: str, scheme: KeyScheme, lease_s: float, now: float) -> None:
        """Admit a worker, or refuse it: keys made under another scheme would silently miss."""
        if worker_id == SHARED_WORKER:
            raise ValueError(f"{SHARED_WORKER!r} names the shared Redis tier, not a worker")
        with self.lock:
            if self.scheme is None:
                self.scheme = scheme
            elif scheme != self.scheme:
                raise KeySchemeMismatchError(
                    f"worker {worker_id!r} announces key scheme {scheme_descriptor(scheme)}; this "
                    f"directory holds {scheme_descriptor(self.scheme)}")
            self._workers[worker_id] = _Worker(lease_s, now + lease_s)

    def has_worker(self, worker_id: str | None) -> bool:
        with self.lock:
            return worker_id in self._workers

    def renew(self, worker_id: str, now: float) -> None:
        with self.lock:
            worker = self._workers.get(worker_id)
            if worker is not None:
                worker.expires_at = now + worker.lease_s

    def drop(self, worker_id: str) -> None:
        """Forget a worker and every block it owns (not the shared Redis ones)."""
        with self.lock:
            self._workers.pop(worker_id, None)
            self._clear(worker_id, None)

    def forget_blocks(self, worker_id: str) -> None:
        """Keep the worker, drop what we believed it holds (its history was lost)."""
        with self.lock:
            self._clear(worker_id, None)

    def expire(self, now: float) -> list[str]:
        """Drop workers whose lease lapsed; returns their ids."""
        with self.lock:
            lapsed = [w for w, state in self._workers.items() if state.expires_at <= now]
            for worker_id in lapsed:
                del self._workers[worker_id]
                self._clear(worker_id, None)
        for worker_id in lapsed:
            logger.info("worker %r lease lapsed; its directory entries are dropped", worker_id)
        return lapsed

    def apply(self, worker_id: str, events: list[KVEvent]) -> None:
        with self.lock:
            if worker_id not in self._workers:
                return  # expired or never admitted: its news cannot be trusted
            for event in events:
                if isinstance(event, BlockStored):
                    owner = _owner(worker_id, event.medium)
                    for key in event.block_hashes:
                        self._holders.setdefault(key, {}).setdefault(owner, set()).add(event.medium)
                        self._owned.setdefault(owner, set()).add(key)
                elif isinstance(event, BlockRemoved):
                    owner = _owner(worker_id, event.medium)
                    for key in event.block_hashes:
                        self._remove(key, owner, event.medium)
                elif isinstance(event, AllBlocksCleared):
                    medium = event.medium
                    self._clear(SHARED_WORKER if medium == SHARED_WORKER else worker_id, medium)

    def longest_prefix(self, keys: list[BlockKey]) -> list[PrefixMatch]:
        """For each owner, how many leading `keys` it holds and in which tiers; longest first."""
        counts: dict[str, dict[str, int]] = {}
        with self.lock:
            candidates: set[str] | None = None
            for key in keys:
                holders = self._holders.get(key, {})
                candidates = set(holders) if candidates is None else candidates & holders.keys()
                if not candidates:
                    break
                for owner in candidates:
                    best = min(holders[owner], key=_rank)
                    by_tier = counts.setdefault(owner, {})
                    by_tier[best] = by_tier.get(best, 0) + 1
        matches = [PrefixMatch(owner, min(by_tier, key=_rank), sum(by_tier.values()), by_tier)
                   for owner, by_tier in counts.items()]
        return sorted(matches, key=lambda m: (-m.num_blocks, _rank(m.tier), m.worker_id))

    def workers(self) -> list[str]:
        with self.lock:
            return sorted(self._workers)

    def _remove(self, key: bytes, owner: str, medium: str | None) -> None:
        holders = self._holders.get(key)
        tiers = holders.get(owner) if holders is not None else None
        if holders is None or tiers is None:
            return
        if medium is None:
            tiers.clear()
        else:
            tiers.discard(medium)
        if not tiers:
            del holders[owner]
            self._owned[owner].discard(key)
            if not holders:
                del self._holders[key]

    def _clear(self, owner: str, medium: str | None) -> None:
        for key in list(self._owned.get(owner, ())):
            self._remove(key, owner, medium)
        if not self._owned.get(owner):
            self._owned.pop(owner, None)


def _owner(worker_id: str, medium: str) -> str:
    return SHARED_WORKER if medium == SHARED_WORKER else worker_id
