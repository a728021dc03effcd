"""A transparency log of what boundaries run and what was released to them: an append-only
Merkle tree as RFC 6962/9162 define it (leaf hash SHA-256(0x00 || leaf), node hash
SHA-256(0x01 || left || right), a tree of n leaves split at the largest power of two below n),
with inclusion proofs a client checks against a signed tree head — so a boundary cannot show
one client measurements it hides from the rest (Apple PCC's reason for one).

Leaves are canonical JSON records, kept one a line in a file; the tree is recomputed from them
when the log opens.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.contracts.base import canonical_json
from aruntime.evidence.signing import DeploymentKey, verify_signature


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two below n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root_of(hashes: list[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 6962 2.1); the empty tree's is SHA-256 of nothing."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(root_of(hashes[:k]), root_of(hashes[k:]))


def inclusion_path(index: int, hashes: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 2.1.1: the sibling hashes from leaf `index` up."""
    if len(hashes) <= 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return [*inclusion_path(index, hashes[:k]), root_of(hashes[k:])]
    return [*inclusion_path(index - k, hashes[k:]), root_of(hashes[:k])]


def verify_inclusion(index: int, size: int, leaf: bytes, path: list[bytes],
                     root: bytes) -> bool:
    """RFC 9162 2.1.3.2: whether `leaf` is entry `index` of the tree of `size` with `root`."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


@dataclass(frozen=True)
class TreeHead:
    size: int
    root: str  # hex
    signature: str  # the log's Ed25519 signature over `signed_bytes`

    def signed_bytes(self) -> bytes:
        return canonical_json({"log": "aruntime.transparency/v1", "size": self.size,
                               "root": self.root})

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        return verify_signature(public_key, self.signed_bytes(), self.signature)


class TransparencyLog:
    def __init__(self, path: Path, key: DeploymentKey) -> None:
        self.path, self.key = Path(path), key
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._leaves = [line.encode() for line in self.path.read_text().splitlines()] \
            if self.path.exists() else []
        self._hashes = [leaf_hash(leaf) for leaf in self._leaves]

    def append(self, record: dict[str, Any]) -> int:
        """Add a leaf; its index."""
        leaf = canonical_json(record)
        with self._lock, open(self.path, "ab") as f:
            f.write(leaf + b"\n")
            self._leaves.append(leaf)
            self._hashes.append(leaf_hash(leaf))
            return len(self._leaves) - 1

    def head(self) -> TreeHead:
        with self._lock:
            hashes = list(self._hashes)
        return self._signed(hashes)

    def _signed(self, hashes: list[bytes]) -> TreeHead:
        unsigned = TreeHead(len(hashes), root_of(hashes).hex(), "")
        return TreeHead(unsigned.size, unsigned.root, self.key.sign(unsigned.signed_bytes()))

    def proof(self, index: int) -> dict[str, Any]:
        """The leaf at `index`, its inclusion path and the signed head it proves against."""
        with self._lock:
            if not 0 <= index < len(self._leaves):
                raise IndexError(f"no leaf {index} in a log of {len(self._leaves)}")
            leaf, hashes = self._leaves[index], list(self._hashes)
        head = self._signed(hashes)  # the head of the very tree the path is in
        path = inclusion_path(index, hashes)
        return {"index": index, "leaf": json.loads(leaf), "path": [p.hex() for p in path],
                "size": head.size, "root": head.root, "signature": head.signature}


def check_proof(proof: dict[str, Any], public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The leaf, if the proof holds against a head signed by `public_key`; ValueError else."""
    head = TreeHead(int(proof["size"]), str(proof["root"]), str(proof["signature"]))
    if not head.verify(public_key):
        raise ValueError("the tree head is not signed by the log's key")
    leaf = canonical_json(proof["leaf"])
    path = [bytes.fromhex(p) for p in proof["path"]]
    if not verify_inclusion(int(proof["index"]), head.size, leaf, path, bytes.fromhex(head.root)):
        raise ValueError("the leaf is not in the signed tree (the inclusion proof fails)")
    leaf_value: dict[str, Any] = proof["leaf"]
    return leaf_value
