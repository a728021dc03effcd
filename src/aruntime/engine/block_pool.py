"""Paged KV block bookkeeping: reference counts, an LRU free queue and the prefix cache.

No tensors here; the runner owns the KV memory and only sees block ids. A free block that holds
a cached full block stays findable by its key until it is reused (LRU order), as in vLLM's
automatic prefix caching.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from aruntime.kv.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBuffer
from aruntime.kv.keys import BlockKey


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    key: BlockKey | None = None
    token_ids: tuple[int, ...] = ()  # checked on every hit, so a key collision can't serve wrong KV


class NoFreeBlocksError(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True,
                 events: EventBuffer | None = None) -> None:
        self.events = events
        if num_blocks < 1:
            raise ValueError("the KV cache holds no block; raise --kv-cache-bytes")
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.enable_caching = enable_caching
        # Evict from the front. An OrderedDict gives O(1) removal of a cached block on a hit.
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[BlockKey, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def allocate(self, n: int) -> list[int]:
        """Take n blocks from the LRU end; a cached block taken this way stops being cached."""
        if n > len(self._free):
            raise NoFreeBlocksError(f"need {n} blocks, {len(self._free)} free")
        ids = []
        for _ in range(n):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.key is not None:
                del self._cached[block.key]
                if self.events is not None:
                    self.events.emit(BlockRemoved([block.key], "device"))
                block.key, block.token_ids = None, ()
            block.ref_count = 1
            ids.append(block_id)
        return ids

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference each. Pass a sequence's blocks tail first, so that on eviction its
        last blocks go before its first ones (a prefix is worth more than a suffix)."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self._free[block_id] = None

    def lookup(self, keys: Sequence[BlockKey], token_ids: Sequence[int],
               block_size: int) -> list[int]:
        """Longest cached prefix of `keys`: the block ids, not yet referenced."""
        hits: list[int] = []
        if not self.enable_caching:
            return hits
        for i, key in enumerate(keys):
            block_id = self._cached.get(key)
            if block_id is None:
                break
            if self.blocks[block_id].token_ids != tuple(
                    token_ids[i * block_size:(i + 1) * block_size]):
                break
            hits.append(block_id)
        return hits

    def take(self, block_ids: Sequence[int]) -> None:
        """Reference cached blocks found by `lookup`, removing free ones from the LRU queue."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1

    def cache(self, block_id: int, key: BlockKey, token_ids: Sequence[int]) -> None:
        """Publish a full, computed block under its key. The first publisher of a key wins."""
        if not self.enable_caching or key in self._cached:
            return
        block = self.blocks[block_id]
        if block.key is not None:
            return
        block.key, block.token_ids = key, tuple(token_ids)
        self._cached[key] = block_id
        if self.events is not None:
            self.events.emit(BlockStored([key], None, list(token_ids), len(token_ids), "device"))

    def forget_all(self) -> None:
        """Every block unheld is forgotten (the memory behind them was lost: a parallel group
        restarted). No sequence may still hold one."""
        assert self.num_free == self.num_blocks, "forgetting blocks a sequence still holds"
        self._cached.clear()
        for block in self.blocks:
            block.key, block.token_ids = None, ()
        if self.events is not None:
            self.events.emit(AllBlocksCleared("device"))
