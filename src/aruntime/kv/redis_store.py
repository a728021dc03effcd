"""A Redis server as a KV tier shared by workers and machines."""

from __future__ import annotations

import json

from aruntime.kv.block_format import KeySchemeMismatchError, scheme_descriptor
from aruntime.kv.keys import BlockKey, KeyScheme
from aruntime.kv.tier_store import Stored, TierStore, encoded


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
        found = announced.decode() if isinstance(announced, bytes) else announced
        if found is not None and found != descriptor:
            raise KeySchemeMismatchError(
                f"Redis {url} prefix {prefix!r} holds blocks of scheme {found}, "
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

    def get(self, key: BlockKey) -> Stored | None:
        blob = self.client.get(self._k(key))
        return blob if isinstance(blob, bytes) else None

    def put(self, key: BlockKey, blob: Stored) -> list[tuple[BlockKey, Stored]]:
        self.client.set(self._k(key), encoded(blob))
        return []

    def delete(self, key: BlockKey) -> None:
        self.client.delete(self._k(key))

    def close(self) -> None:
        self.client.close()
