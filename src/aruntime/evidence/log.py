"""The evidence log: an append-only JSONL file of `aruntime.evidence/v1` records, each line
carrying the previous line's hash, so that altering, removing or reordering a record shows.

Content that may need erasure never enters the chain: records hold salted digests
(`output_digest`), and forgetting the salt unlinks a digest from its text.

The chain, its signatures and their rules are evidence/chain.py's, shared with the run log. With
a signer (the deployment's Ed25519 key) every record is signed. The log is a chain that stays
open (the server goes on appending), so an unsigned record is an error only under
`require_signatures`; records cut from the end show only against a hash remembered from before
(`verify(..., anchor=...)`).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.contracts import EvidenceRecord, StrictModel, canonical_json
from aruntime.evidence.chain import GENESIS_HASH, ChainResult, Link, link, read_record, verify_chain
from aruntime.evidence.signing import DeploymentKey

_TAIL_CHUNK = 64 * 1024
R = TypeVar("R", bound=StrictModel)


class EvidenceLogError(Exception):
    """The log cannot be opened or appended to safely."""


def output_digest(texts: list[str], salt: bytes) -> str:
    """HMAC-SHA256 of the outputs (in order), keyed by a per-tenant or per-request salt.

    Without the salt, a digest of a short or guessable output could be confirmed by brute force;
    with it, deleting the salt is enough to erase the link between record and content."""
    if len(salt) < 16:
        raise ValueError("salt must be at least 16 bytes")
    return "hmac-sha256:" + hmac.new(salt, canonical_json(list(texts)), hashlib.sha256).hexdigest()


class EvidenceLog(Generic[R]):
    """One writer per file: appends are serialised by a lock within the process, and an
    exclusive `flock` taken at open makes a second process fail loudly instead of forking
    the chain. Its records are `contract`'s: the request log's by default, or another
    chained contract (the policy's decision log, `aruntime.decision/v1`)."""

    def __init__(self, path: Path, signer: DeploymentKey | None = None, *,
                 fsync: bool = False, contract: type[R] = EvidenceRecord) -> None:  # type: ignore[assignment]
        self.path = Path(path)
        self.contract = contract
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
            self._last_hash = _recover_tail(self._fd, self.path, contract)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def last_hash(self) -> str:
        """The hash the next record will chain to."""
        return self._last_hash

    def append(self, record: R | dict[str, Any]) -> R:
        """Chain `record` to the log (and sign it, with a signer) and write it as one line;
        returns it with both hashes and the signature set. Any the caller set are replaced."""
        if isinstance(record, dict):
            record = self.contract.model_validate(record)
        with self._lock:
            if self._fd < 0:
                raise EvidenceLogError(f"{self.path} is closed")
            chained = record.model_copy(update={"hash": None, "signature": None})
            data = link(chained.model_dump(mode="json"), self._last_hash, self.signer)
            _write_all(self._fd, canonical_json(data) + b"\n")
            if self.fsync:
                os.fsync(self._fd)
            self._last_hash = data["hash"]
        return chained.model_copy(update={"prev_hash": data["prev_hash"], "hash": data["hash"],
                                          "signature": data["signature"]})

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)  # also releases the flock
                self._fd = -1

    def __enter__(self) -> EvidenceLog[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _recover_tail(fd: int, path: Path, contract: type[StrictModel]) -> str:
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
        last = contract.model_validate(json.loads(line))
    except ValueError as exc:  # JSON errors and pydantic's ValidationError alike
        last = None
        reason = str(exc).splitlines()[0]
    else:
        reason = "it has no hash"
    last_hash: str | None = getattr(last, "hash", None)
    if last_hash is None:
        raise EvidenceLogError(
            f"{path}: the last line is not a chained evidence record ({reason}); "
            "check the file with verify() before appending"
        )
    return last_hash


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
           require_signatures: bool = False, anchor: str | None = None,
           contract: type[StrictModel] = EvidenceRecord) -> ChainResult:
    """Check every line: complete, a valid record, its own hash, and its link to the line
    before; with `public_key`, its signature; with `require_signatures`, that it has one; with
    `anchor`, that some record has that hash (records cut from the end lose it). Errors name
    lines from 1."""
    with open(path, "rb") as f:
        return verify_chain(_lines(f, contract), public_key, require_signatures=require_signatures,
                            open_chain=True, anchor=anchor)


def _lines(f: Iterable[bytes], contract: type[StrictModel]) -> Iterator[Link]:
    for number, raw in enumerate(f, start=1):
        torn = () if raw.endswith(b"\n") else ("incomplete final line (torn write)",)
        data, problem = read_record(raw, contract)
        yield Link(f"line {number}", data, (*torn, problem) if problem else torn)
