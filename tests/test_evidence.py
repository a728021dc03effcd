"""The evidence log: a real file, real threads, real restarts."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from aruntime.contracts import EvidenceRecord, canonical_json
from aruntime.state.evidence import (
    GENESIS_HASH,
    EvidenceLog,
    EvidenceLogError,
    output_digest,
    verify,
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


def _write(log_path: Path, n: int) -> list[EvidenceRecord]:
    with EvidenceLog(log_path) as log:
        return [log.append(_record(i)) for i in range(n)]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_append_five_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "evidence.jsonl"
    records = _write(path, 5)
    assert records[0].prev_hash == GENESIS_HASH
    for before, after in zip(records, records[1:]):
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
    with EvidenceLog(path):
        # flock is per open file description, so a second open in this process conflicts too.
        with pytest.raises(EvidenceLogError, match="another process"):
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
