"""The transparency log: RFC 6962 Merkle tree hashes and inclusion proofs — paths built by the
recursive definition, checked by RFC 9162's iterative verifier — for every leaf of trees of
every size up to 33, and against tampering: another leaf, another index, a cut path, a head
signed by another key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from aruntime.confidential.transparency import (
    TransparencyLog,
    check_proof,
    inclusion_path,
    leaf_hash,
    root_of,
    verify_inclusion,
)
from aruntime.evidence.signing import DeploymentKey


def test_known_roots() -> None:
    assert root_of([]) == hashlib.sha256(b"").digest()
    a, b, c = (leaf_hash(x) for x in (b"a", b"b", b"c"))

    def node(left: bytes, right: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + left + right).digest()

    assert root_of([a, b, c]) == node(node(a, b), c)  # split at the largest power of 2 below n


@pytest.mark.parametrize("size", range(1, 34))
def test_every_leaf_proves_and_no_other_does(size: int) -> None:
    leaves = [f"leaf {i}".encode() for i in range(size)]
    hashes = [leaf_hash(x) for x in leaves]
    root = root_of(hashes)
    for i, leaf in enumerate(leaves):
        path = inclusion_path(i, hashes)
        assert verify_inclusion(i, size, leaf, path, root)
        assert not verify_inclusion(i, size, b"another leaf", path, root)
        if size > 1:
            assert not verify_inclusion((i + 1) % size, size, leaf, path, root)
        if path:
            assert not verify_inclusion(i, size, leaf, path[:-1], root)


def test_a_log_survives_reopening_and_its_proofs_are_signed(tmp_path: Path) -> None:
    key = DeploymentKey.generate()
    log = TransparencyLog(tmp_path / "t.jsonl", key)
    for i in range(5):
        log.append({"kind": "release", "n": i})
    again = TransparencyLog(tmp_path / "t.jsonl", key)
    assert again.head().root == log.head().root and again.head().size == 5
    proof = again.proof(3)
    assert check_proof(proof, key.public_key) == {"kind": "release", "n": 3}
    with pytest.raises(ValueError, match="not signed"):
        check_proof(proof, DeploymentKey.generate().public_key)
    with pytest.raises(ValueError, match="inclusion proof"):
        check_proof({**proof, "leaf": {"kind": "release", "n": 4}}, key.public_key)
    with pytest.raises(IndexError):
        again.proof(5)
