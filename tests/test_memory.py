"""Governed memory, subject keys, the artifact store and erasure, on real SQLite files and real
AES-GCM / Ed25519 keys."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from aruntime.durable.journal import Entry, Run, SqliteJournal, SqlJournal
from aruntime.evidence.signing import DeploymentKey
from aruntime.governance.artifacts import ArtifactError, ArtifactStore
from aruntime.governance.erasure import LegalHoldError, erase_subject, verify_receipt
from aruntime.governance.memory import MemoryStore, Scope
from aruntime.governance.subject_keys import SealedDataError, ShreddedError, SubjectKeys, is_sealed
from aruntime.timeutil import utc_now

ALICE = "alice@example.com"
BOB = "bob@example.com"
Stores = tuple[SqlJournal, SubjectKeys, MemoryStore, ArtifactStore]


@pytest.fixture()
def stores(journal: SqlJournal, tmp_path: Path) -> Stores:
    """Every store on one journal: SQLite, then PostgreSQL (conftest's `journal`)."""
    keys = SubjectKeys(journal)
    return journal, keys, MemoryStore(journal, keys), ArtifactStore(tmp_path / "artifacts")


def test_seal_round_trip_hides_the_subject(stores: Stores) -> None:
    journal, keys, _, _ = stores
    sealed = keys.seal(ALICE, b"alice's secret", context=b"run-1/3")
    assert is_sealed(sealed) and not is_sealed("{}") and keys.is_sealed(sealed)
    assert sealed.startswith(f"sealed:v1:{keys.digest(ALICE)}:")
    assert "alice" not in sealed and "secret" not in sealed
    assert keys.open(sealed, context=b"run-1/3") == b"alice's secret"
    assert SubjectKeys(journal).open(sealed, context=b"run-1/3") == b"alice's secret"
    with pytest.raises(SealedDataError):
        keys.open(sealed, context=b"run-2/3")  # moved to another place
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(SealedDataError):
        keys.open(tampered, context=b"run-1/3")
    with pytest.raises(SealedDataError):
        keys.open("sealed:v1:nonsense")
    assert keys.seal(ALICE, b"x") != keys.seal(ALICE, b"x")  # fresh nonce each time


def test_shredded_key_cannot_open_or_seal(stores: Stores) -> None:
    _, keys, _, _ = stores
    sealed, other = keys.seal(ALICE, b"alice data"), keys.seal(BOB, b"bob data")
    record = keys.shred(ALICE)
    assert record.had_key and record.subject_digest == keys.digest(ALICE)
    assert record.shredded_at.endswith("Z") and keys.is_shredded(ALICE)
    with pytest.raises(ShreddedError):
        keys.open(sealed)
    with pytest.raises(ShreddedError):
        keys.seal(ALICE, b"new data after erasure")
    assert not keys.shred(ALICE).had_key  # idempotent
    assert keys.open(other) == b"bob data"
    assert not keys.shred("carol").had_key and keys.is_shredded("carol")


def test_scopes_are_enforced(stores: Stores) -> None:
    _, _, memory, _ = stores
    mine = Scope("acme", ALICE, "assistant")
    memory.put(mine, "city", "Lisbon")
    memory.put(Scope("acme", ALICE, "assistant", run="r1"), "city", "Porto")
    for other in (Scope("globex", ALICE, "assistant"), Scope("acme", BOB, "assistant"),
                  Scope("acme", ALICE, "planner"), Scope("acme", ALICE, "assistant", run="r2")):
        assert memory.get(other, "city") is None
        assert memory.list(other) == [] and memory.search(other, "") == []
    assert _value(memory, mine, "city") == "Lisbon"
    assert [i.value for i in memory.list(Scope("acme", ALICE, "assistant", "r1"))] == ["Porto"]
    with pytest.raises(ValueError):
        Scope("", ALICE, "assistant")
    with pytest.raises(ValueError):
        Scope("acme", ALICE, "assistant", run="")


def test_items_carry_pii_tags_subject_and_search(stores: Stores) -> None:
    _, keys, memory, _ = stores
    scope = Scope("acme", ALICE, "assistant")
    memory.put(scope, "contact", {"email": "Alice@Example.com"}, pii=["email", "name", "email"])
    memory.put(scope, "about-bob", {"note": "Bob likes tea"}, pii=["name"], subject=BOB)
    memory.put(scope, "colour", "green")
    items = {i.key: i for i in memory.list(scope)}
    assert items["contact"].pii == ("email", "name") and items["colour"].pii == ()
    assert items["contact"].subject_digest == keys.digest(ALICE)
    assert items["about-bob"].subject_digest == keys.digest(BOB)
    assert [i.key for i in memory.search(scope, "alice@")] == ["contact"]
    assert [i.key for i in memory.search(scope, "TEA")] == ["about-bob"]
    keys.shred(BOB)  # a shredded subject's items never match, and get says why
    assert memory.search(scope, "tea") == []
    assert "about-bob" not in [i.key for i in memory.list(scope)]
    with pytest.raises(ShreddedError):
        memory.get(scope, "about-bob")
    with pytest.raises(ValueError):
        memory.put(scope, "k", 1, retention="forever")


def test_retention_expires_all_but_legal_hold(stores: Stores) -> None:
    _, _, memory, _ = stores
    scope = Scope("acme", ALICE, "assistant")
    for retention in ("session", "short", "long", "legal-hold"):
        memory.put(scope, retention, {"kept": retention}, retention=retention)
    now = utc_now()
    assert memory.expire(now) == 0
    assert memory.expire(now + timedelta(days=2)) == 1
    assert memory.expire(now + timedelta(days=31)) == 1
    assert memory.expire(now + timedelta(days=3650)) == 1
    assert [i.key for i in memory.list(scope)] == ["legal-hold"]


def test_artifact_store(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    ref = store.put(b"payload")
    assert ref.startswith("artifact:sha256:") and store.put(b"payload") == ref
    assert store.get(ref) == b"payload" and list(store.refs()) == [ref]
    store.path(ref).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="corrupt"):
        store.get(ref)
    assert store.delete(ref) and not store.delete(ref) and list(store.refs()) == []
    with pytest.raises(ArtifactError, match="no such artifact"):
        store.get(ref)
    with pytest.raises(ArtifactError, match="not an artifact reference"):
        store.get("artifact:sha256:../../etc/passwd")


def test_legal_hold_blocks_erasure(stores: Stores) -> None:
    journal, keys, memory, artifacts = stores
    scope = Scope("acme", ALICE, "assistant")
    memory.put(scope, "contract", "signed 2024", retention="legal-hold")
    signer = DeploymentKey.generate()
    with pytest.raises(LegalHoldError):
        erase_subject(ALICE, journal, keys, memory, artifacts, signer)
    assert memory.get(scope, "contract") is not None and not keys.is_shredded(ALICE)
    receipt = erase_subject(ALICE, journal, keys, memory, artifacts, signer, release_holds=True)
    assert receipt.body["stores"]["memory"] == {"items_deleted": 1, "legal_holds_released": 1}
    assert memory.list(scope) == []


def _run(journal: SqlJournal, run_id: str) -> Run:
    run = journal.get_run(run_id)
    assert run is not None
    return run


def _value(memory: MemoryStore, scope: Scope, key: str) -> Any:
    item = memory.get(scope, key)
    assert item is not None
    return item.value


TABLES = ("runs", "entries", "evidence", "subject_keys", "subject_salt", "memory")


def _db_bytes(journal: SqlJournal) -> bytes:
    """SQLite: the file's bytes, WAL and index too, so deleted rows in free pages count.
    PostgreSQL: every row of every table as text (dead tuples await VACUUM: not checked)."""
    if isinstance(journal, SqliteJournal):
        path = journal.path
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
                        if p.exists())
    return repr([journal.query(f"SELECT * FROM {t}") for t in TABLES]).encode()


def _dir_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_erased_subject_is_found_nowhere_and_receipt_verifies(stores: Stores) -> None:
    journal, keys, memory, artifacts = stores
    secrets_ = ["ALICE-PHONE-555-0142", "ALICE-DIAGNOSIS-ASTHMA", "ALICE-ADDRESS-RUA-AUGUSTA",
                "ALICE-RESULT-APPROVED", "ALICE-ERROR-CARD-4242", "ALICE-DETAIL-PASSPORT"]
    phone, diagnosis, address, result, error, detail = secrets_
    scope = Scope("acme", ALICE, "assistant")
    memory.put(scope, "phone", {"phone": phone}, pii=["phone"])
    memory.put(Scope("acme", ALICE, "assistant", run="run-a"), "diagnosis", diagnosis,
               retention="short", pii=["health"])

    def seal(text: str, subject: str = ALICE) -> str:
        return keys.seal(subject, json.dumps(text).encode())

    # What the flow runtime writes for a run with a subject: sealed payloads, a sealed artifact.
    journal.create_run("run-a", "flows:support", seal(address), subject=ALICE)
    big = artifacts.put(seal(address * 1000).encode())
    shared = artifacts.put(b'"a public document, not personal"')
    sealed_phone = seal(phone)
    journal.record(Entry("run-a", 0, "step", "lookup", "sha256:" + "0" * 64, "done",
                         output=sealed_phone, detail=seal(detail)))
    journal.record(Entry("run-a", 1, "tool", "fetch", "sha256:" + "1" * 64, "done", output=big))
    journal.record(Entry("run-a", 2, "step", "charge", "sha256:" + "2" * 64, "error",
                         error=seal(error)))
    journal.record(Entry("run-a", 3, "step", "read", "sha256:" + "3" * 64, "done", output=shared))
    journal.set_status("run-a", "completed", result=seal(result))
    journal.create_run("run-b", "flows:support", seal("ALICE-ORPHAN"), subject=ALICE)  # running
    orphan = artifacts.put(seal("ALICE-ORPHAN-ARTIFACT").encode())  # no entry names it
    # Bob's data must survive Alice's erasure.
    memory.put(Scope("acme", BOB, "assistant"), "phone", "BOB-PHONE")
    journal.create_run("run-c", "flows:support", seal("BOB-INPUT", BOB), subject=BOB)
    bob_art = artifacts.put(seal("BOB-ARTIFACT", BOB).encode())
    journal.record(Entry("run-c", 0, "step", "s", "sha256:" + "4" * 64, "done", output=bob_art))
    journal.record(Entry("run-c", 1, "step", "read", "sha256:" + "3" * 64, "done", output=shared))

    alice_key = journal.query("SELECT key FROM subject_keys WHERE subject = ?",
                              (keys.digest(ALICE),))[0][0]
    before = _db_bytes(journal)
    assert ALICE.encode() in before  # the grep below can see what is there
    assert not any(s.encode() in before + _dir_bytes(artifacts.root) for s in secrets_)  # sealed
    signer = DeploymentKey.generate()
    receipt = erase_subject(ALICE, journal, keys, memory, artifacts, signer)

    db, files = _db_bytes(journal), _dir_bytes(artifacts.root)
    for needle in [ALICE, "alice", "ALICE", alice_key, *secrets_]:
        assert db.find(needle.encode()) == -1, needle  # find(): no megabyte dump on failure
        assert files.find(needle.encode()) == -1, needle
        assert memory.search(scope, needle) == []
    assert memory.list(scope) == [] and not any(artifacts.exists(r) for r in (big, orphan))
    with pytest.raises(ShreddedError):  # a copy kept anywhere (a backup) opens no more
        keys.open(sealed_phone)
    assert {"run-a", "run-b"} == {r[0] for r in journal.query(
        "SELECT run_id FROM runs WHERE subject = ?", (keys.digest(ALICE),))}
    tombstone = f"erased:{receipt.receipt_id}"
    assert _run(journal, "run-b").status == "cancelled"
    assert {e.output for e in journal.entries("run-a")} == {tombstone, None}
    assert _run(journal, "run-a").result == tombstone
    # Bob's memory, run and artifact, and the artifact both runs read, are intact.
    assert _value(memory, Scope("acme", BOB, "assistant"), "phone") == "BOB-PHONE"
    assert keys.open(_run(journal, "run-c").input) == b'"BOB-INPUT"'
    assert keys.open(artifacts.get(bob_art).decode()) == b'"BOB-ARTIFACT"'
    assert artifacts.get(shared) == b'"a public document, not personal"'

    body, sqlite = receipt.body, isinstance(journal, SqliteJournal)
    assert body["subject_digest"] == keys.digest(ALICE) and body["key_id"] == signer.key_id
    assert body["stores"] == {
        "subject_keys": {"keys_shredded": 1},
        "memory": {"items_deleted": 2, "legal_holds_released": 0},
        "artifacts": {"deleted": 2, "kept_shared": 1},
        "journal": {"runs_blanked": 2, "runs_cancelled": 1, "entries_blanked": 4,
                    "wal_checkpoint": "truncated" if sqlite else "none"}}
    text = receipt.to_json()
    assert "alice" not in text
    assert verify_receipt(receipt, signer.public_key) and verify_receipt(text, signer.public_key)
    assert not verify_receipt(text, DeploymentKey.generate().public_key)
    raw = text.encode()
    for i in range(len(raw)):  # every one-byte change is caught, the signature's included
        changed = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1:]
        assert not verify_receipt(changed, signer.public_key), (i, changed[i:i + 20])
    again = erase_subject(ALICE, journal, keys, memory, artifacts, signer)  # idempotent
    assert again.body["stores"]["subject_keys"] == {"keys_shredded": 0}
    assert again.body["stores"]["memory"]["items_deleted"] == 0
    assert again.body["stores"]["artifacts"]["deleted"] == 0
