"""A worker's prefix cache as the simulator sees it: an LRU of block ids on the device, and an
optional host tier that takes what the device evicts. Hits are whole leading blocks."""

from __future__ import annotations

from collections import OrderedDict


class PrefixCache:
    def __init__(self, device_blocks: int, host_blocks: int = 0) -> None:
        if device_blocks < 0 or host_blocks < 0:
            raise ValueError("cache capacities must be >= 0")
        self.device_blocks = device_blocks
        self.host_blocks = host_blocks
        self.device: OrderedDict[int, None] = OrderedDict()
        self.host: OrderedDict[int, None] = OrderedDict()

    def peek(self, hash_ids: tuple[int, ...]) -> int:
        """Leading blocks held in any tier, without touching recency (for routing)."""
        n = 0
        for h in hash_ids:
            if h not in self.device and h not in self.host:
                break
            n += 1
        return n

    def lookup(self, hash_ids: tuple[int, ...]) -> tuple[int, int]:
        """(blocks hit, of which in the host tier) for the leading hit; the hit is touched and
        its host blocks are promoted to the device."""
        hit, promote = 0, []
        for h in hash_ids:
            if h in self.device:
                self.device.move_to_end(h)
            elif h in self.host:
                promote.append(h)
            else:
                break
            hit += 1
        for h in promote:
            self.host.pop(h, None)
            self._put_device(h)
        return hit, len(promote)

    def insert(self, hash_ids: tuple[int, ...]) -> None:
        for h in hash_ids:
            if h in self.device:
                self.device.move_to_end(h)
            else:
                self.host.pop(h, None)
                self._put_device(h)

    def _put_device(self, h: int) -> None:
        self.device[h] = None
        while len(self.device) > self.device_blocks:
            old, _ = self.device.popitem(last=False)
            if self.host_blocks:
                self.host[old] = None
                while len(self.host) > self.host_blocks:
                    self.host.popitem(last=False)
