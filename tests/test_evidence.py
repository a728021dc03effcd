"""The evidence log and its signatures: a real file, real threads, real restarts, real keys."""

from __future__ import annotations

import itertools
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aruntime.contracts import EvidenceRecord, canonical_json
from aruntime.evidence.chain import GENESIS_HASH, sign_record_hash
from aruntime.evidence.log import EvidenceLog, EvidenceLogError, output_digest, verify
from aruntime.evidence.signing import (
    DeploymentKey,
    SigningError,
    load_public_key,
    public_key_path,
    verify_signature,
)

SALT = b"tenant-salt-0123456789"


def _record(i: int, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": f"req-{i}",
        "tenant": "default",
        "model": "tiny-llama",
        "model_revision": "sha256:" + "12" * 32,
        "engine_version": "aruntime-engine/0.1.0",
        "hardware": "cpu",
        "precision": "float32",
        "route": {"worker": "w0", "cached_tokens_predicted": 16, "cached_tokens_used": 16},
        "policy_decisions": [{"policy_version": "p1", "decision": "allow", "reasons": ["ok"]}],
        "timings": {"queue_s": 0.001, "ttft_s": 0.02, "tpot_s": 0.005, "e2e_s": 0.1},
        "usage": {"prompt_tokens": 32, "completion_tokens": 8, "cached_tokens": 16},
        "finish_reasons": ["stop"],
        "output_digest": output_digest([f"output {i}"], SALT),
    }
    body.update(overrides)
    return body


def _write(log_path: Path, n: int, signer: DeploymentKey | None = None) -> list[EvidenceRecord]:
    with EvidenceLog(log_path, signer) as log:
        return [log.append(_record(i)) for i in range(n)]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_append_five_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    records = _write(path, 5)
    assert records[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash
    for rec in records:
        assert rec.hash == rec.compute_hash()
    result = verify(path)
    assert result.ok and result.count == 5 and result.errors == []
    # Each line is the record's canonical JSON.
    assert _lines(path)[2] == canonical_json(records[2].model_dump(mode="json")) + b"\n"


def test_append_accepts_a_model_and_replaces_caller_hashes(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    rec = EvidenceRecord.model_validate(_record(0, prev_hash="sha256:" + "ab" * 32))
    with EvidenceLog(path) as log:
        out = log.append(rec)
        assert log.last_hash == out.hash
    assert out.prev_hash == GENESIS_HASH
    assert verify(path).ok


def test_tampered_field_is_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    _write(path, 5)
    lines = _lines(path)
    data = json.loads(lines[2])
    data["usage"]["completion_tokens"] = 9999
    lines[2] = canonical_json(data) + b"\n"
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok and result.count == 5
    assert result.errors == ["line 3: hash mismatch: the record was altered after it was written"]


def test_rehashed_tamper_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    _write(path, 4)
    lines = _lines(path)
    data = json.loads(lines[1])
    data["hardware"] = "h100"
    data["hash"] = EvidenceRecord.model_validate(data).compute_hash()
    lines[1] = canonical_json(data) + b"\n"
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok
    assert len(result.errors) == 1 and result.errors[0].startswith("line 3: prev_hash")


def test_swapped_lines_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    _write(path, 5)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok and result.count == 5
    assert any(e.startswith("line 2: prev_hash does not match line 1") for e in result.errors)
    assert all("hash mismatch" not in e for e in result.errors)


def test_dropped_head_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    _write(path, 5)
    path.write_bytes(b"".join(_lines(path)[1:]))
    result = verify(path)
    assert not result.ok and result.count == 4
    assert result.errors == [
        "line 1: prev_hash is not the genesis hash: the head of the chain is missing"
    ]


def test_malformed_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    _write(path, 3)
    lines = _lines(path)
    lines.insert(1, b"{not json\n")
    lines.append(b'{"schema": "aruntime.evidence/v1"}\n')
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok and result.count == 5
    assert result.errors[0].startswith("line 2: malformed JSON")
    assert result.errors[1].startswith("line 5: not an aruntime.evidence/v1 record")
    assert len(result.errors) == 2  # line 3's link follows a malformed line: not re-reported


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    first = _write(path, 3)
    with EvidenceLog(path, fsync=True) as log:
        assert log.last_hash == first[-1].hash
        nxt = log.append(_record(3))
    assert nxt.prev_hash == first[-1].hash
    result = verify(path)
    assert result.ok and result.count == 4


def test_reopen_truncates_a_torn_final_line(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    first = _write(path, 3)
    whole = path.read_bytes()
    with open(path, "ab") as f:  # a crash halfway through writing a fourth record
        f.write(canonical_json(_record(3))[:40])
    torn = verify(path)
    assert not torn.ok and torn.errors[0] == "line 4: incomplete final line (torn write)"
    with EvidenceLog(path) as log:
        assert path.read_bytes() == whole
        assert log.append(_record(4)).prev_hash == first[-1].hash
    assert verify(path).ok


def test_reopen_refuses_a_corrupt_last_line(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    _write(path, 2)
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(EvidenceLogError, match="last line is not a chained evidence record"):
        EvidenceLog(path)


def test_second_writer_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    # flock is per open file description, so a second open in this process conflicts too.
    with EvidenceLog(path), pytest.raises(EvidenceLogError, match="another process"):
        EvidenceLog(path)
    with EvidenceLog(path) as log:  # released on close
        log.append(_record(0))


def test_append_after_close_fails(tmp_path: Path) -> None:
    log = EvidenceLog(tmp_path / "evidence.jsonl")
    log.close()
    with pytest.raises(EvidenceLogError, match="closed"):
        log.append(_record(0))


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    with EvidenceLog(path) as log:
        barrier = threading.Barrier(4)

        def worker(t: int) -> None:
            barrier.wait()
            for i in range(50):
                log.append(_record(t * 1000 + i))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    result = verify(path)
    assert result.ok, result.errors
    assert result.count == 200
    ids = {json.loads(line)["request_id"] for line in _lines(path)}
    assert len(ids) == 200


def test_output_digest_is_salted_and_ordered() -> None:
    a = output_digest(["one", "two"], SALT)
    assert a.startswith("hmac-sha256:") and len(a) == len("hmac-sha256:") + 64
    assert a == output_digest(["one", "two"], SALT)
    assert a != output_digest(["two", "one"], SALT)
    assert a != output_digest(["one", "two"], b"another-salt-0123456")
    assert a != output_digest(["onetwo"], SALT)  # boundaries between outputs count
    with pytest.raises(ValueError, match="16 bytes"):
        output_digest(["x"], b"short")


# ---- the deployment key ------------------------------------------------------------------------


def test_key_is_created_private_once_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys" / "evidence-ed25519.pem"
    key = DeploymentKey.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "evidence-ed25519.pem", "evidence-ed25519.pub.pem"]  # no temporary files left
    assert key.key_id.startswith("ed25519:") and len(key.key_id) == len("ed25519:") + 16
    again = DeploymentKey.load_or_create(path)
    assert again.key_id == key.key_id and again.path == path
    public = public_key_path(path)
    assert public.read_text() == key.public_pem()
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    public.unlink()  # a verifier's copy is rewritten from the private key
    DeploymentKey.load_or_create(path)
    assert load_public_key(public).public_bytes_raw() == key.public_key.public_bytes_raw()


def test_racing_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "evidence-ed25519.pem"
    barrier = threading.Barrier(8)
    ids: list[str] = []

    def create() -> None:
        barrier.wait()
        ids.append(DeploymentKey.load_or_create(path).key_id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert DeploymentKey.load_or_create(path).key_id == ids[0]


def test_sign_and_verify_signature() -> None:
    key, other = DeploymentKey.generate(), DeploymentKey.generate()
    sig = key.sign(b"data")
    assert len(sig) == 86 and "=" not in sig
    assert verify_signature(key.public_key, b"data", sig)
    assert not verify_signature(key.public_key, b"datA", sig)
    assert not verify_signature(other.public_key, b"data", sig)
    assert not verify_signature(key.public_key, b"data", sig[:-1])
    assert not verify_signature(key.public_key, b"data", "!" * 86)
    assert load_public_key(key.public_pem()).public_bytes_raw() == key.public_key.public_bytes_raw()


def test_foreign_key_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    with pytest.raises(SigningError, match="not an unencrypted PEM private key"):
        DeploymentKey.load_or_create(garbage)
    with pytest.raises(SigningError, match="not a PEM public key"):
        load_public_key(garbage)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_private = tmp_path / "ec.pem"
    ec_private.write_bytes(ec_key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    with pytest.raises(SigningError, match="not an Ed25519 private key"):
        DeploymentKey.load_or_create(ec_private)
    ec_public = tmp_path / "ec.pub.pem"
    ec_public.write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(SigningError, match="not an Ed25519 public key"):
        load_public_key(ec_public)
    with pytest.raises(SigningError, match="cannot read"):
        load_public_key(tmp_path / "missing.pem")


# ---- signed logs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> DeploymentKey:
    return DeploymentKey.generate()


def _signed(tmp_path: Path, key: DeploymentKey, n: int = 5) -> tuple[Path, list[EvidenceRecord]]:
    path = tmp_path / "evidence.jsonl"
    return path, _write(path, n, key)


def _edit(path: Path, index: int, **changes: Any) -> None:
    lines = _lines(path)
    data = json.loads(lines[index])
    data.update(changes)
    lines[index] = canonical_json(data) + b"\n"
    path.write_bytes(b"".join(lines))


def test_signed_log_verifies(tmp_path: Path, key: DeploymentKey) -> None:
    path, records = _signed(tmp_path, key)
    for rec in records:
        assert rec.signature is not None and rec.hash is not None
        key_id, _, sig = rec.signature.rpartition(":")
        assert key_id == key.key_id
        assert verify_signature(key.public_key, rec.hash.encode(), sig)
    assert json.loads(_lines(path)[0])["signature"] == records[0].signature
    result = verify(path, key.public_key, require_signatures=True, anchor=records[2].hash)
    assert result.ok, result.errors
    assert (result.count, result.signed, result.unsigned) == (5, 5, 0)
    assert result.key_id == key.key_id and result.head == records[-1].hash
    assert verify(path).ok  # without a key: the chain alone


def test_append_replaces_a_caller_signature(tmp_path: Path, key: DeploymentKey) -> None:
    path = tmp_path / "evidence.jsonl"
    with EvidenceLog(path) as log:
        assert log.append(_record(0, signature="ed25519:0000:forged")).signature is None
    with EvidenceLog(path, key) as log:
        assert log.append(_record(1, signature="forged")).signature != "forged"
    result = verify(path, key.public_key)
    assert result.ok and (result.signed, result.unsigned) == (1, 1)


def test_signed_tampered_field_is_a_hash_mismatch(tmp_path: Path, key: DeploymentKey) -> None:
    path, _ = _signed(tmp_path, key)
    _edit(path, 1, hardware="h100")
    result = verify(path, key.public_key, require_signatures=True)
    assert result.errors == ["line 2: hash mismatch: the record was altered after it was written"]


def test_signed_tamper_with_a_new_hash_is_a_bad_signature(tmp_path: Path,
                                                           key: DeploymentKey) -> None:
    path, _ = _signed(tmp_path, key)
    data = json.loads(_lines(path)[1])
    data["hardware"] = "h100"
    _edit(path, 1, hardware="h100", hash=EvidenceRecord.model_validate(data).compute_hash())
    result = verify(path, key.public_key)
    assert not result.ok and result.signed == 4
    assert result.errors[0] == "line 2: bad signature: it does not sign this record's hash"
    assert result.errors[1].startswith("line 3: prev_hash does not match line 2")


def test_record_signed_by_another_key(tmp_path: Path, key: DeploymentKey) -> None:
    path, records = _signed(tmp_path, key)
    other = DeploymentKey.generate()
    assert records[3].hash is not None
    _edit(path, 3, signature=sign_record_hash(other, records[3].hash))
    result = verify(path, key.public_key)
    assert result.errors == [
        f"line 4: signed by another key ({other.key_id}, expected {key.key_id})"]
    # The other key's signature claiming to be ours is simply bad.
    _edit(path, 3, signature=f"{key.key_id}:{other.sign(records[3].hash.encode())}")
    assert verify(path, key.public_key).errors == [
        "line 4: bad signature: it does not sign this record's hash"]
    _edit(path, 3, signature="garbage")
    assert verify(path, key.public_key).errors == [
        "line 4: bad signature: not '<key id>:<base64url signature>'"]


def test_stripped_signature(tmp_path: Path, key: DeploymentKey) -> None:
    path, _ = _signed(tmp_path, key)
    _edit(path, 2, signature=None)
    relaxed = verify(path, key.public_key)
    assert relaxed.ok and (relaxed.signed, relaxed.unsigned) == (4, 1)
    strict = verify(path, key.public_key, require_signatures=True)
    assert strict.errors == ["line 3: unsigned record"]


def test_signed_reorder_and_dropped_head(tmp_path: Path, key: DeploymentKey) -> None:
    path, _ = _signed(tmp_path, key)
    whole = _lines(path)
    path.write_bytes(b"".join([whole[0], whole[2], whole[1], *whole[3:]]))
    errors = verify(path, key.public_key).errors
    assert errors[0] == "line 2: prev_hash does not match line 1's hash: " \
                        "records were removed, inserted or reordered"
    assert all("signature" not in e for e in errors)  # each record is still genuinely signed
    path.write_bytes(b"".join(whole[1:]))
    assert verify(path, key.public_key).errors == [
        "line 1: prev_hash is not the genesis hash: the head of the chain is missing"]


def test_cut_tail_is_caught_by_an_anchor(tmp_path: Path, key: DeploymentKey) -> None:
    path, records = _signed(tmp_path, key)
    head = records[-1].hash
    path.write_bytes(b"".join(_lines(path)[:3]))
    assert verify(path, key.public_key).ok  # a shorter chain is still a whole chain
    result = verify(path, key.public_key, anchor=head)
    assert result.errors == [f"no record has the anchor hash {head}: records were cut from "
                             "the end of the chain, or this is another log"]


def test_signed_torn_tail_is_reported(tmp_path: Path, key: DeploymentKey) -> None:
    path, _ = _signed(tmp_path, key)
    with open(path, "ab") as f:
        f.write(_lines(path)[0][:50])
    result = verify(path, key.public_key, require_signatures=True)
    assert not result.ok and result.count == 6 and result.signed == 5
    assert result.errors[0] == "line 6: incomplete final line (torn write)"
    assert result.errors[1].startswith("line 6: malformed JSON")


def test_a_signature_has_one_spelling() -> None:
    """The last base64url character of an Ed25519 signature (64 bytes in 86 characters) carries
    four spare bits: another character with the same two leading bits decodes to the same bytes
    and must not verify, or a record's signature could change without anyone being able to
    tell."""
    from aruntime.evidence.signing import DeploymentKey, verify_signature

    key = DeploymentKey.generate()
    sig = key.sign(b"data")
    assert verify_signature(key.public_key, b"data", sig)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twins = [sig[:-1] + c for c in alphabet
             if c != sig[-1] and alphabet.index(c) >> 4 == alphabet.index(sig[-1]) >> 4]
    assert twins and not any(verify_signature(key.public_key, b"data", t) for t in twins)


def test_a_log_of_another_contract_reopens_where_it_ended(tmp_path: Path) -> None:
    """The decision log (aruntime.decision/v1) is read back by its own contract on restart."""
    from aruntime.contracts import DecisionRecord

    path = tmp_path / "decisions.jsonl"
    record = {"principal": "p", "tenant": "t", "via": "http",
              "decision": {"policy_version": "v1", "decision": "deny"}}
    with EvidenceLog(path, contract=DecisionRecord) as log:
        first = log.append(record)
    with EvidenceLog(path, contract=DecisionRecord) as log:
        assert log.last_hash == first.hash
        log.append(record)
    assert verify(path, contract=DecisionRecord).ok
