"""The engine's side of the KV tiers: device blocks written through to the tiers after they are
computed, and prefix hits in the tiers loaded back into device blocks before they are used."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from aruntime.engine.runner import ModelRunner
from aruntime.kv.block_format import StaleBlockError
from aruntime.kv.events import EventBuffer
from aruntime.kv.keys import BlockKey, KeyScheme
from aruntime.kv.shm_store import ShmStore
from aruntime.kv.tier_stores import DiskStore, HostStore, RedisStore, TierStore
from aruntime.kv.tiered_cache import TieredKVCache

logger = logging.getLogger(__name__)


def build_tiers(scheme: KeyScheme, host_bytes: int = 0, disk_dir: str | None = None,
                disk_bytes: int = 0, redis_url: str | None = None,
                events: EventBuffer | None = None, transport_dir: str | None = None,
                transport_bytes: int = 0) -> TieredKVCache | None:
    """The tiers a deployment asked for, top to bottom; None when it asked for none. A KV
    transport (disaggregated workers) is the top tier: computed blocks are written through to
    it before the step's outputs leave, so a decode worker finds them once the prefill answers."""
    stores: list[TierStore] = []
    if transport_dir:
        stores.append(ShmStore(Path(transport_dir), transport_bytes, scheme))
    if host_bytes > 0:
        stores.append(HostStore(host_bytes))
    if disk_dir:
        if disk_bytes <= 0:
            raise ValueError("--kv-disk-dir needs --kv-disk-bytes > 0")
        stores.append(DiskStore(Path(disk_dir), disk_bytes, scheme))
    if redis_url:
        stores.append(RedisStore(redis_url, scheme))
    return TieredKVCache(scheme, stores, events) if stores else None


class TierLoader:
    """Implements the scheduler's PrefixLoader over a TieredKVCache and the runner's blocks."""

    def __init__(self, tiers: TieredKVCache, runner: ModelRunner) -> None:
        self.tiers = tiers
        self.runner = runner
        # restore cost per tier, read to device blocks included: what a prefix hit really costs
        self.restore_seconds = {s.name: 0.0 for s in tiers.stores}
        self.restore_bytes = {s.name: 0 for s in tiers.stores}

    def available(self, keys: list[BlockKey]) -> int:
        return self.tiers.available(keys)

    def load(self, keys: list[BlockKey], block_ids: list[int]) -> int:
        payloads, tiers, reads = [], [], []
        for key in keys:  # the prefix ends at the first block no tier can serve
            start = time.perf_counter()
            found = self.tiers.get(key)
            if found is None:
                break
            reads.append(time.perf_counter() - start)
            payloads.append(found[0])
            tiers.append(found[1])
        start = time.perf_counter()
        try:
            self.runner.write_blocks(block_ids[:len(payloads)], payloads)
        except StaleBlockError as exc:  # right scheme, wrong layout: drop them, recompute
            logger.warning("dropping %d KV blocks: %s", len(payloads), exc)
            return 0
        # Restore cost per tier: each block's own read, plus its share (by bytes) of the
        # batched copy into device blocks.
        copy_s = time.perf_counter() - start
        total = sum(len(p.data) for p in payloads) or 1
        for payload, tier, read_s in zip(payloads, tiers, reads, strict=False):
            self.restore_seconds[tier] += read_s + copy_s * len(payload.data) / total
            self.restore_bytes[tier] += len(payload.data)
        return len(payloads)

    def store(self, published: list[tuple[int, BlockKey]]) -> None:
        """Write-through of newly computed blocks (their KV is final: blocks are immutable)."""
        for block_id, key in published:
            self.tiers.put(key, self.runner.read_block(block_id))
