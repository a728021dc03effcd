"""Canonical block keys: the same prefix gives the same key in every process, on every machine,
after every restart. A key chains its parent, so it covers the whole prefix, the model revision
and the tenant's salt; Python's seeded `hash()` is never used."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NewType

BlockKey = NewType("BlockKey", bytes)

KEY_SCHEME_NAME = "aruntime.blockkey"
SHARED_NAMESPACE = b"\x00shared"  # the salt of prefixes shared across tenants on purpose
KEY_SCHEME_VERSION = 1


@dataclass(frozen=True, slots=True)
class KeyScheme:
    """What every engine and store announces; two parties with different schemes never match."""

    block_size: int
    model_revision: str
    name: str = KEY_SCHEME_NAME
    version: int = KEY_SCHEME_VERSION

    def root(self, tenant_salt: bytes = b"") -> BlockKey:
        """The fixed parent of a prefix's first block, for one tenant namespace."""
        header = f"{self.name}/v{self.version}\0{self.block_size}\0{self.model_revision}\0"
        return BlockKey(hashlib.sha256(header.encode() + tenant_salt).digest())


def block_key(parent: BlockKey, token_ids: Sequence[int]) -> BlockKey:
    """Key of one full block: sha256(parent key || token ids as little-endian uint32)."""
    return BlockKey(
        hashlib.sha256(parent + struct.pack(f"<{len(token_ids)}I", *token_ids)).digest())


def prefix_keys(root: BlockKey, token_ids: Sequence[int], block_size: int) -> list[BlockKey]:
    """Keys of every full block of `token_ids`, in order."""
    keys: list[BlockKey] = []
    parent = root
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = block_key(parent, token_ids[start:start + block_size])
        keys.append(parent)
    return keys


def rerooted(root: BlockKey, shared_last: BlockKey) -> BlockKey:
    """Where a tenant's chain goes on after a prefix shared across tenants: its root, bound to
    the shared prefix's last key."""
    return BlockKey(hashlib.sha256(root + shared_last).digest())


@dataclass(frozen=True, slots=True)
class CacheScope:
    """Where a request's KV blocks are keyed: in its tenant's namespace (`tenant_salt`, derived
    from the tenant's secret so no other tenant can compute its keys), except the first
    `shared_prefix_tokens` (whole blocks), keyed in the shared namespace — a prefix published on
    purpose, such as a common system prompt, reused across tenants. `device_only` (a
    confidential request's): its blocks are never offered to a store below the device, nor
    loaded from one, and share no prefix."""

    tenant_salt: bytes = b""
    shared_prefix_tokens: int = 0
    device_only: bool = False

    def __post_init__(self) -> None:
        if self.shared_prefix_tokens < 0:
            raise ValueError("shared_prefix_tokens must be >= 0")
        if self.device_only and self.shared_prefix_tokens:
            raise ValueError("a device-only request shares no prefix")


NO_SCOPE = CacheScope()


def request_keys(scheme: KeyScheme, tokens: Sequence[int],
                 scope: CacheScope = NO_SCOPE) -> list[BlockKey]:
    """The keys of a prompt's full blocks, as the engine gives them (`Sequence.block_keys`): the
    first `scope.shared_prefix_tokens // block_size` in the shared namespace, the rest re-rooted
    in the tenant's."""
    bs = scheme.block_size
    shared = scope.shared_prefix_tokens // bs
    if not shared:
        return prefix_keys(scheme.root(scope.tenant_salt), tokens, bs)
    keys = prefix_keys(scheme.root(SHARED_NAMESPACE), tokens[:shared * bs], bs)
    if len(keys) < shared:
        return keys
    return keys + prefix_keys(rerooted(scheme.root(scope.tenant_salt), keys[-1]),
                              tokens[shared * bs:], bs)
