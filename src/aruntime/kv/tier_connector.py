"""`TierConnector`: the KV connector over a stack of stores (kv/tiered_cache.py) — the transport
on top when the worker is disaggregated, then host RAM, local disk and Redis.

`save` writes computed blocks through to the top store before the step's outputs leave, so a
decode worker finds a prompt's blocks in the transport once its prefill answers; what a store
evicts goes down to the next on the tiered cache's writer thread. `load` restores a prefix hit
from the stores into device blocks in one batched copy and keeps the restore's cost per store:
what a hit there really costs, reads and copies included.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from aruntime.kv.block_format import BlockPayload, StaleBlockError, encode
from aruntime.kv.config import KVConfig
from aruntime.kv.connector import DeviceBlocks, KVConnector
from aruntime.kv.disk_store import DiskStore
from aruntime.kv.events import EventBuffer
from aruntime.kv.host_store import HostStore
from aruntime.kv.keys import BlockKey, KeyScheme
from aruntime.kv.redis_store import RedisStore
from aruntime.kv.shm_store import ShmStore
from aruntime.kv.staged_store import StagedStore
from aruntime.kv.tier_store import TierStore
from aruntime.kv.tiered_cache import TieredKVCache

logger = logging.getLogger(__name__)


def open_stores(scheme: KeyScheme, kv: KVConfig) -> list[TierStore]:
    """The stores a deployment asked for, top to bottom (the transport first)."""
    stores: list[TierStore] = []
    if kv.transport_dir:
        stores.append(ShmStore(Path(kv.transport_dir), kv.transport_bytes, scheme))
    if kv.staged:
        stores.append(StagedStore(kv.transport_bytes, scheme))
    if kv.host_bytes > 0:
        stores.append(HostStore(kv.host_bytes))
    if kv.disk_dir:
        stores.append(DiskStore(Path(kv.disk_dir), kv.disk_bytes, scheme))
    if kv.redis_url:
        stores.append(RedisStore(kv.redis_url, scheme))
    return stores


class TierConnector(KVConnector):
    def __init__(self, tiers: TieredKVCache, device: DeviceBlocks) -> None:
        self.tiers = tiers
        self.device = device
        self.restore_seconds = {s.name: 0.0 for s in tiers.stores}
        self.restore_bytes = {s.name: 0 for s in tiers.stores}

    @classmethod
    def open(cls, scheme: KeyScheme, kv: KVConfig, device: DeviceBlocks,
             events: EventBuffer | None = None) -> TierConnector | None:
        """The connector over what `kv` asks for; None when it asks for no store."""
        stores = open_stores(scheme, kv)
        return cls(TieredKVCache(scheme, stores, events), device) if stores else None

    def staged(self) -> StagedStore | None:
        """The store a transport outside the engine hands blocks through, if there is one."""
        top = self.tiers.stores[0]
        return top if isinstance(top, StagedStore) else None

    def available(self, keys: list[BlockKey]) -> int:
        return self.tiers.available(keys)

    def load(self, keys: list[BlockKey], block_ids: list[int]) -> int:
        payloads: list[BlockPayload] = []
        tiers, reads = [], []
        for key in keys:  # the prefix ends at the first block no store can serve
            start = time.perf_counter()
            found = self.tiers.get(key)
            if found is None:
                break
            reads.append(time.perf_counter() - start)
            payloads.append(found[0])
            tiers.append(found[1])
        start = time.perf_counter()
        try:
            self.device.write_blocks(block_ids[:len(payloads)], payloads)
        except StaleBlockError as exc:  # right scheme, wrong layout: drop them, recompute
            logger.warning("dropping %d KV blocks: %s", len(payloads), exc)
            return 0
        # Restore cost per store: each block's own read, plus its share (by bytes) of the
        # batched copy into device blocks.
        copy_s = time.perf_counter() - start
        total = sum(len(p.data) for p in payloads) or 1
        for payload, tier, read_s in zip(payloads, tiers, reads, strict=True):
            self.restore_seconds[tier] += read_s + copy_s * len(payload.data) / total
            self.restore_bytes[tier] += len(payload.data)
        return len(payloads)

    def save(self, blocks: list[tuple[int, BlockKey]]) -> None:
        payloads = self.device.read_blocks([block_id for block_id, _ in blocks]) if blocks else []
        for (_, key), payload in zip(blocks, payloads, strict=True):
            self.tiers.put(key, payload)

    def export(self, blocks: list[tuple[int, BlockKey]]) -> list[bytes]:
        """Device blocks encoded with their keys, for a transport outside the engine to carry
        to another worker's staged store (a prefill worker's handoff over Ray)."""
        payloads = self.device.read_blocks([block_id for block_id, _ in blocks]) if blocks else []
        return [encode(self.tiers.scheme, key, payload)
                for (_, key), payload in zip(blocks, payloads, strict=True)]

    def close(self) -> None:
        self.tiers.close()
