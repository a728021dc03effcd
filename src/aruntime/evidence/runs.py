"""A run's evidence: hash-chained, signed records of what it did, kept in the journal.

Each record (`aruntime.run-evidence/v1`) names an event — run start and end, a step's output, a
model call with the model's revision, each phase of a tool call, a human decision with the
digest it was bound to — with digests, never payloads. `prev_hash` chains it to the run's
previous record and `hash` covers every field but itself and `signature`; the signature is the
deployment key's over the hash, as in the request evidence log (evidence/log.py).

A journaled step's record is written in the step's own transaction and is not signed: the chain
binds it to the next signed record, and every record that is not a step's — run start, each
suspension and end, every tool phase and human decision — is signed. So each point a run rests
at is signed over everything before it, and a step costs one commit and no signature. Only a run
still running (its process died mid-step) may end in unsigned records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.contracts import canonical_json, evidence_hash
from aruntime.durable.journal import Entry, EvidenceConflict, Run, SqlJournal
from aruntime.evidence.log import GENESIS_HASH, sign_record_hash
from aruntime.evidence.signing import DeploymentKey, key_id, verify_signature
from aruntime.timeutil import rfc3339, utc_now

SCHEMA = "aruntime.run-evidence/v1"
T = TypeVar("T")
# the events of journaled entries (step_done, model_done, tool_intent, …): signed by the next
# signed record through the chain
STEP_EVENTS = ("_done", "_error", "_intent", "_waiting", "_attempt")


class RunEvidence:
    """Appends to runs' chains. The head of each chain this process writes is kept in memory,
    so an append reads nothing; another writer's record shows up as a conflict, and the head
    is read again."""

    def __init__(self, journal: SqlJournal, signer: DeploymentKey | None = None) -> None:
        self.journal = journal
        self.signer = signer
        self._heads: dict[str, tuple[int, str]] = {}  # run -> (next n, last hash)

    def _head(self, run_id: str) -> tuple[int, str]:
        if run_id not in self._heads:
            last = self.journal.query("SELECT n, hash FROM evidence WHERE run_id = ? "
                                      "ORDER BY n DESC LIMIT 1", (run_id,))
            self._heads[run_id] = (int(last[0][0]) + 1, str(last[0][1])) if last else (
                0, GENESIS_HASH)
        return self._heads[run_id]

    def _build(self, run_id: str, event: str, fields: dict[str, Any],
               sign: bool = True) -> dict[str, Any]:
        n, prev = self._head(run_id)
        record = {"schema": SCHEMA, "run_id": run_id, "n": n, "event": event,
                  "created_at": rfc3339(utc_now()),
                  **{k: v for k, v in fields.items() if v is not None}, "prev_hash": prev}
        record["hash"] = evidence_hash(record)
        if sign and self.signer is not None:
            record["signature"] = sign_record_hash(self.signer, record["hash"])
        return record

    def _with_record(self, run_id: str, event: str, fields: dict[str, Any],
                     write: Callable[[tuple[int, str, str]], tuple[T, bool]],
                     sign: bool = True) -> T:
        """Build the next record and hand it, as (n, JSON, hash), to `write`: a journal write
        that inserts it in the same transaction as its change and says whether it wrote.
        Retried with a fresh head if another writer took the slot (`EvidenceConflict`)."""
        while True:
            record = self._build(run_id, event, fields, sign)
            try:
                result, wrote = write((record["n"], canonical_json(record).decode(),
                                       record["hash"]))
            except EvidenceConflict:
                self._heads.pop(run_id, None)
                continue
            if wrote:
                self._heads[run_id] = (record["n"] + 1, record["hash"])
            return result

    def record_entry(self, entry: Entry, event: str, **fields: Any) -> Entry:
        """Journal a new entry with its (unsigned: see above) evidence record in one
        transaction. Returns the stored entry: `entry` itself if this call wrote it, else the
        one another writer put there first (which then has its own evidence)."""

        def write(evidence: tuple[int, str, str]) -> tuple[Entry, bool]:
            stored = self.journal.record(entry, evidence)
            return stored, stored is entry

        return self._with_record(entry.run_id, event, fields, write, sign=False)

    def advance(self, run_id: str, seq: int, from_states: tuple[str, ...], state: str,
                event: str, /, *, output: str | None = None, error: str | None = None,
                **fields: Any) -> bool:
        """Compare-and-set an entry's state and record `event` (with the entry's `seq` and
        `error`, if any), in one transaction: a state change is never on disk without its
        evidence. False when the entry was not in `from_states` (nothing written)."""
        fields = {"seq": seq, **fields, "error": error}

        def write(evidence: tuple[int, str, str]) -> tuple[bool, bool]:
            moved = self.journal.advance(run_id, seq, from_states, state, output=output,
                                         error=error, evidence=evidence)
            return moved, moved

        return self._with_record(run_id, event, fields, write)

    def start_run(self, run_id: str, flow: str, input_json: str, subject: str | None,
                  **fields: Any) -> tuple[Run, bool]:
        """Create the run with its first evidence record (one transaction)."""

        def write(evidence: tuple[int, str, str]) -> tuple[tuple[Run, bool], bool]:
            run, created = self.journal.create_run(run_id, flow, input_json, subject, evidence)
            return (run, created), created

        self._heads.setdefault(run_id, (0, GENESIS_HASH))  # a new run's chain starts here
        run, created = self._with_record(run_id, "run_started", {"flow": flow, **fields}, write)
        if not created:
            self._heads.pop(run_id, None)  # it existed: its chain is in the journal
        return run, created

    def set_status(self, run_id: str, status: str, event: str, *, result: str | None = None,
                   error: str | None = None, unless: tuple[str, ...] = (),
                   **fields: Any) -> bool:
        """Move the run's status and record `event`, in one transaction."""

        def write(evidence: tuple[int, str, str]) -> tuple[bool, bool]:
            moved = self.journal.set_status(run_id, status, result=result, error=error,
                                            unless=unless, evidence=evidence)
            return moved, moved

        return self._with_record(run_id, event, fields, write)


@dataclass(slots=True)
class RunVerify:
    run_id: str
    records: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.records > 0 and not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "records": self.records, "ok": self.ok,
                "errors": self.errors}


def verify_run(journal: SqlJournal, run_id: str,
               public_key: Ed25519PublicKey | None = None) -> RunVerify:
    """Check the run's chain (order, links, hashes) and, given the deployment's public key, its
    signatures: each must verify, and an unsigned (step) record must be followed by a signed
    one, unless the run is still running."""
    result = RunVerify(run_id)
    prev = GENESIS_HASH
    expected_key = key_id(public_key) if public_key is not None else None
    unsigned_since: int | None = None
    for i, (n, text, stored_hash) in enumerate(journal.evidence(run_id)):
        result.records += 1
        where = f"record {n}"
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            result.errors.append(f"{where}: not JSON")
            continue
        if n != i or record.get("n") != n or record.get("run_id") != run_id:
            result.errors.append(f"{where}: out of place (expected record {i} of {run_id})")
        if record.get("prev_hash") != prev:
            result.errors.append(f"{where}: prev_hash does not link to the record before it")
        actual = evidence_hash(record)
        if record.get("hash") != actual or stored_hash != actual:
            result.errors.append(f"{where}: hash does not match its content")
        if public_key is not None:
            signature = str(record.get("signature") or "")
            kid, _, sig = signature.rpartition(":")
            if not signature:
                if not str(record.get("event", "")).endswith(STEP_EVENTS):
                    result.errors.append(f"{where}: unsigned")
                unsigned_since = n if unsigned_since is None else unsigned_since
            elif kid != expected_key or not verify_signature(public_key, actual.encode("ascii"),
                                                              sig):
                result.errors.append(f"{where}: signature does not verify with key "
                                     f"{expected_key}")
            else:
                unsigned_since = None
        prev = actual
    if result.records == 0:
        result.errors.append(f"run {run_id} has no evidence records")
    if unsigned_since is not None:  # only a running run may end on unsigned records
        run = journal.get_run(run_id)
        if run is None or run.status != "running":
            result.errors.append(f"records from {unsigned_since} on are signed by no later "
                                 "record")
    return result
