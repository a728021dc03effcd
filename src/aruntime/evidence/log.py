"""The evidence log: an append-only JSONL file of `aruntime.evidence/v1` records, each line
carrying the previous line's hash, so that altering, removing or reordering a record shows.

Content that may need erasure never enters the chain: records hold salted digests
(`output_digest`), and forgetting the salt unlinks a digest from its text.

With a signer (the deployment's Ed25519 key), each record's `signature` is
`"<key id>:<base64url Ed25519 signature>"`, e.g. `"ed25519:0123456789abcdef:MEUCIQ…"`, over the
ASCII bytes of its `hash`; the hash already covers every other field, `prev_hash` included. The
chain shows removed, inserted and reordered records; the signatures show who wrote them. Records
cut from the end leave a shorter chain that is still whole: only a hash remembered from before
(`verify(..., anchor=...)`, e.g. the `head` the server reports) shows that.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from aruntime.contracts import (
    EvidenceRecord,
    canonical_json,
    evidence_hash,
    validation_message,
)
from aruntime.evidence.signing import DeploymentKey, key_id, verify_signature

GENESIS_HASH = "sha256:" + "0" * 64
_TAIL_CHUNK = 64 * 1024


class EvidenceLogError(Exception):
    """The log cannot be opened or appended to safely."""


def output_digest(texts: list[str], salt: bytes) -> str:
    """HMAC-SHA256 of the outputs (in order), keyed by a per-tenant or per-request salt.

    Without the salt, a digest of a short or guessable output could be confirmed by brute force;
    with it, deleting the salt is enough to erase the link between record and content."""
    if len(salt) < 16:
        raise ValueError("salt must be at least 16 bytes")
    return "hmac-sha256:" + hmac.new(salt, canonical_json(list(texts)), hashlib.sha256).hexdigest()


def sign_record_hash(signer: DeploymentKey, record_hash: str) -> str:
    """A record's `signature`: the signer's key id, a colon, the signature of the hash."""
    return f"{signer.key_id}:{signer.sign(record_hash.encode('ascii'))}"


@dataclass
class VerifyResult:
    ok: bool
    count: int
    errors: list[str] = field(default_factory=list)
    signed: int = 0  # signatures that verified against the key given
    unsigned: int = 0
    key_id: str | None = None  # the key signatures were checked against
    head: str | None = None  # the last well-formed record's hash


class EvidenceLog:
    """One writer per file: appends are serialised by a lock within the process, and an
    exclusive `flock` taken at open makes a second process fail loudly instead of forking
    the chain."""

    def __init__(self, path: Path, signer: DeploymentKey | None = None, *,
                 fsync: bool = False) -> None:
        self.path = Path(path)
        self.signer = signer
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise EvidenceLogError(f"{self.path} is open for writing in another process") from None
        try:
            self._last_hash = _recover_tail(self._fd, self.path)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def last_hash(self) -> str:
        """The hash the next record will chain to."""
        return self._last_hash

    def append(self, record: EvidenceRecord | dict[str, Any]) -> EvidenceRecord:
        """Chain `record` to the log (and sign it, with a signer) and write it as one line;
        returns it with both hashes and the signature set. Any the caller set are replaced."""
        if isinstance(record, dict):
            record = EvidenceRecord.model_validate(record)
        with self._lock:
            if self._fd < 0:
                raise EvidenceLogError(f"{self.path} is closed")
            chained = record.model_copy(
                update={"prev_hash": self._last_hash, "hash": None, "signature": None})
            data = chained.model_dump(mode="json")
            data["hash"] = evidence_hash(data)
            if self.signer is not None:
                data["signature"] = sign_record_hash(self.signer, data["hash"])
            _write_all(self._fd, canonical_json(data) + b"\n")
            if self.fsync:
                os.fsync(self._fd)
            self._last_hash = data["hash"]
        return chained.model_copy(
            update={"hash": data["hash"], "signature": data.get("signature")})

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)  # also releases the flock
                self._fd = -1

    def __enter__(self) -> EvidenceLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _recover_tail(fd: int, path: Path) -> str:
    """The last complete record's hash (genesis for an empty file).

    A crash in the middle of `append` can leave a final line without its newline. That record
    was never acknowledged (append returns only after the whole line is written), so the torn
    bytes are cut off here and the chain continues from the last complete line."""
    size = os.fstat(fd).st_size
    if size == 0:
        return GENESIS_HASH
    end = size
    if os.pread(fd, 1, size - 1) != b"\n":
        end = _last_newline(fd, size) + 1
        os.ftruncate(fd, end)
        if end == 0:
            return GENESIS_HASH
    start = _last_newline(fd, end - 1) + 1
    line = os.pread(fd, end - start, start)
    try:
        last = EvidenceRecord.model_validate(json.loads(line))
    except ValueError as exc:  # JSON errors and pydantic's ValidationError alike
        last = None
        reason = str(exc).splitlines()[0]
    else:
        reason = "it has no hash"
    if last is None or last.hash is None:
        raise EvidenceLogError(
            f"{path}: the last line is not a chained evidence record ({reason}); "
            "check the file with verify() before appending"
        )
    return last.hash


def _last_newline(fd: int, end: int) -> int:
    """Offset of the last b'\\n' before `end`, or -1; reads backwards in chunks."""
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk = os.pread(fd, end - start, start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index
        end = start
    return -1


def verify(path: Path, public_key: Ed25519PublicKey | None = None, *,
           require_signatures: bool = False, anchor: str | None = None) -> VerifyResult:
    """Check every line: well-formed, a valid record, its own hash, and its link to the line
    before; with `public_key`, its signature; with `require_signatures`, that it has one; with
    `anchor`, that some record has that hash (records cut from the end lose it). Line numbers
    in errors start at 1. After a malformed line the next link is not checked (there is nothing
    to check it against), so one bad line gives one error."""
    result = VerifyResult(ok=False, count=0, key_id=key_id(public_key) if public_key else None)
    expected: str | None = GENESIS_HASH
    found_anchor = anchor is None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            result.count = number
            if not raw.endswith(b"\n"):
                result.errors.append(f"line {number}: incomplete final line (torn write)")
            data, problem = _parse_line(raw)
            if problem:
                result.errors.append(f"line {number}: {problem}")
                expected = None
                continue
            assert data is not None
            problems = _check_record(data, expected, number)
            status, sig_problem = _check_signature(data, public_key, result.key_id,
                                                   require_signatures)
            result.signed += status == "valid"
            result.unsigned += status == "unsigned"
            problems += [sig_problem] if sig_problem else []
            result.errors.extend(f"line {number}: {e}" for e in problems)
            expected = result.head = data["hash"]
            found_anchor = found_anchor or data["hash"] == anchor
    if not found_anchor:
        result.errors.append(f"no record has the anchor hash {anchor}: records were cut from "
                             "the end of the chain, or this is another log")
    result.ok = not result.errors
    return result


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return None, f"malformed JSON ({exc})"
    if not isinstance(data, dict):
        return None, "malformed: not a JSON object"
    try:
        EvidenceRecord.model_validate(data)
    except ValidationError as exc:
        return None, f"not an aruntime.evidence/v1 record ({validation_message(exc)})"
    if not data.get("hash") or not data.get("prev_hash"):
        return None, "record has no hash or prev_hash"
    return data, None


def _check_record(data: dict[str, Any], expected: str | None, number: int) -> list[str]:
    errors = []
    if evidence_hash(data) != data["hash"]:
        errors.append("hash mismatch: the record was altered after it was written")
    if expected is not None and data["prev_hash"] != expected:
        if number == 1:
            errors.append("prev_hash is not the genesis hash: the head of the chain is missing")
        else:
            errors.append(
                f"prev_hash does not match line {number - 1}'s hash: "
                "records were removed, inserted or reordered"
            )
    return errors


def _check_signature(data: dict[str, Any], public_key: Ed25519PublicKey | None,
                     expected_id: str | None, required: bool) -> tuple[str, str | None]:
    """(status, problem): status is "valid", "unsigned", "unchecked" (no key) or "bad"."""
    signature = data.get("signature")
    if signature is None:
        return "unsigned", "unsigned record" if required else None
    if public_key is None:
        return "unchecked", None
    claimed, _, value = signature.rpartition(":")
    if not claimed.startswith("ed25519:"):
        return "bad", "bad signature: not '<key id>:<base64url signature>'"
    if claimed != expected_id:
        return "bad", f"signed by another key ({claimed}, expected {expected_id})"
    if not verify_signature(public_key, data["hash"].encode("ascii"), value):
        return "bad", "bad signature: it does not sign this record's hash"
    return "valid", None
