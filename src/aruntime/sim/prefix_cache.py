"""A worker's KV blocks as the simulator sees them, kept as the engine's `BlockPool` keeps its own:
sequences hold blocks (a prefix hit references cached ones), a finished sequence frees its blocks
tail first into an LRU queue, and a new block is taken from that queue's old end, evicting what
was cached there (to the host tier, when there is one). So blocks in use are not evictable, and a
prefix outlives its suffix. Hits are whole leading blocks.

A block is named by its key (a prompt block id, >= 0) once it is cached, and by a negative number
while it holds nothing a prompt can find (partly filled, generated tokens, or a key another block
published first)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    def __init__(self, device_blocks: int, host_blocks: int = 0) -> None:
        if device_blocks < 0 or host_blocks < 0:
            raise ValueError("cache capacities must be >= 0")
        self.device_blocks = device_blocks
        self.host_blocks = host_blocks
        self.unused = device_blocks  # blocks never handed out: the first to be taken
        self.free: OrderedDict[int, None] = OrderedDict()  # LRU first
        self.refs: dict[int, int] = {}  # cached key -> sequences holding it (0: in `free`)
        self.host: OrderedDict[int, None] = OrderedDict()
        self.overcommitted = 0  # blocks handed out beyond the pool (the engine would wait)
        self._blank = 0

    def peek(self, keys: Sequence[int]) -> int:
        """Leading blocks held in any tier, without touching anything (for routing)."""
        n = 0
        refs, host = self.refs, self.host
        for k in keys:
            if k not in refs and k not in host:
                break
            n += 1
        return n

    def peek_tiers(self, keys: Sequence[int]) -> dict[str, int]:
        """The leading blocks held, counted by tier ("device", "host"), as the cache directory
        reports a worker's match."""
        n = self.peek(keys)
        if not n:
            return {}
        if not self.host:
            return {"device": n}
        device = sum(1 for k in keys[:n] if k in self.refs)
        return {t: c for t, c in (("device", device), ("host", n - device)) if c}

    def take(self, keys: Sequence[int]) -> tuple[list[int], int]:
        """Reference the leading hit (a sequence starts): its blocks, and how many of them were
        restored from the host tier into fresh device blocks."""
        table: list[int] = []
        restored = 0
        refs = self.refs
        for k in keys:
            if k in refs:
                if refs[k] == 0:
                    del self.free[k]
                refs[k] += 1
            elif k in self.host:
                del self.host[k]
                self._take_block()
                refs[k] = 1
                restored += 1
            else:
                break
            table.append(k)
        return table, restored

    def allocate(self, n: int) -> list[int]:
        """`n` fresh blocks for a sequence, evicting the least recently freed."""
        fresh = min(n, self.unused)
        self.unused -= fresh
        for _ in range(n - fresh):
            self._take_block()
        first = self._blank - 1
        self._blank -= n
        return list(range(first, self._blank - 1, -1))

    def publish(self, table: list[int], i: int, key: int) -> None:
        """Block `i` of a sequence is full and computed: findable under `key`, unless another
        block holds that key already (the first publisher wins, as in the engine)."""
        if table[i] < 0 and key not in self.refs:
            table[i] = key
            self.refs[key] = 1
            self.host.pop(key, None)  # recomputed: the device copy is the one kept

    def release(self, table: Sequence[int]) -> None:
        """A sequence ends: tail first into the LRU queue, so its prefix is evicted last. Blocks
        handed out beyond the pool go back to nothing."""
        refs, free = self.refs, self.free
        for slot in reversed(table):
            if slot >= 0:
                refs[slot] -= 1
                if refs[slot]:
                    continue
                if self.overcommitted:
                    del refs[slot]
            if self.overcommitted:
                self.overcommitted -= 1
            else:
                free[slot] = None

    def _take_block(self) -> None:
        if self.unused:
            self.unused -= 1
        elif self.free:
            old, _ = self.free.popitem(last=False)
            if old >= 0:
                del self.refs[old]
                if self.host_blocks:
                    self.host[old] = None
                    if len(self.host) > self.host_blocks:
                        self.host.popitem(last=False)
        else:
            self.overcommitted += 1
