"""A run's evidence: hash-chained, signed records of what it did, kept in the journal.

Each record is an `aruntime.run-evidence/v1` (contracts/run_evidence.py) naming an event — run
start and end, a step's output, a model call with the model's revision, each phase of a tool
call, a human decision with the digest it was bound to — with digests, never payloads. Records
are built through the contract, so one that does not fit it is refused before anything is
written. The chain, its signatures and the one rule for them are evidence/chain.py's, shared with
the request log.

A journaled step's record (`RunEvent.journaled_step`) is written in the step's own transaction
and is not signed: the chain binds it to the next signed record, and every other record — run
start, each suspension and end, every tool phase and human decision — is signed. So each point a
run rests at is signed over everything before it, and a step costs one commit and no signature.
Only a run still running (its process died mid-step) is an open chain, which may end on unsigned
records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from aruntime.contracts import (
    RunEvent,
    RunEvidenceRecord,
    canonical_json,
    sha256_digest,
    validation_message,
)
from aruntime.durable.journal import Entry, EvidenceConflict, EvidenceRow, Run, SqlJournal
from aruntime.durable.states import EntryKind, EntryState, RunStatus
from aruntime.evidence.chain import GENESIS_HASH, Link, link, read_record, verify_chain
from aruntime.evidence.signing import DeploymentKey
from aruntime.timeutil import rfc3339, utc_now

T = TypeVar("T")
SCHEMA = "aruntime.run-evidence/v1"

# the record of each entry a flow journals new, by the entry's kind and first state
ENTRY_EVENTS: Mapping[tuple[EntryKind, EntryState], RunEvent] = {
    (EntryKind.STEP, EntryState.DONE): RunEvent.STEP_DONE,
    (EntryKind.STEP, EntryState.ERROR): RunEvent.STEP_ERROR,
    (EntryKind.MODEL, EntryState.DONE): RunEvent.MODEL_DONE,
    (EntryKind.TOOL, EntryState.INTENT): RunEvent.TOOL_INTENT,
    (EntryKind.WAIT, EntryState.WAITING): RunEvent.WAIT_WAITING,
    # refused by the policy before it ran: journaled so that a replay refuses it the same way
    (EntryKind.TOOL, EntryState.REJECTED): RunEvent.POLICY_DENIED,
    (EntryKind.MODEL, EntryState.ERROR): RunEvent.POLICY_DENIED,
}


class RunEvidenceError(ValueError):
    """A run evidence record that does not fit `aruntime.run-evidence/v1`; nothing was written."""


class RunEvidence:
    """Appends to runs' chains, each record in the same transaction as the journal change it
    records. The head of each chain this process writes is kept in memory, so an append reads
    nothing; another writer's record shows up as a conflict, and the head is read again."""

    def __init__(self, journal: SqlJournal, signer: DeploymentKey | None = None) -> None:
        self.journal = journal
        self.signer = signer
        self._heads: dict[str, tuple[int, str]] = {}  # run -> (next n, last hash)

    def _head(self, run_id: str) -> tuple[int, str]:
        if run_id not in self._heads:
            last = self.journal.evidence_head(run_id)
            self._heads[run_id] = (last[0] + 1, last[1]) if last else (0, GENESIS_HASH)
        return self._heads[run_id]

    def _build(self, run_id: str, event: RunEvent, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The run's next record, chained, and signed unless it is a journaled step's."""
        n, prev = self._head(run_id)
        # The record is written as built, once it is known to fit its contract: serialising a
        # validated model back to JSON would cost a step twice what the validation does.
        now = utc_now()
        record = {"schema": SCHEMA, "run_id": run_id, "n": n, "event": event.value,
                  "created_at": rfc3339(now),
                  **{k: v for k, v in fields.items() if v is not None}}
        try:  # the time as a datetime: parsing the text back would cost more than the check
            RunEvidenceRecord.model_validate({**record, "created_at": now})
        except ValidationError as exc:
            raise RunEvidenceError(f"run {run_id}: the {event} record does not fit "
                                   f"aruntime.run-evidence/v1: {validation_message(exc)}") from None
        signer = None if event.journaled_step else self.signer
        return link(record, prev, signer)

    def _with_record(self, run_id: str, event: RunEvent, fields: Mapping[str, Any],
                     write: Callable[[EvidenceRow], tuple[T, bool]]) -> T:
        """Build the next record and hand it, as (n, JSON, hash), to `write`: a journal write
        that inserts it in the same transaction as its change and says whether it wrote.
        Retried with a fresh head if another writer took the slot (`EvidenceConflict`)."""
        while True:
            record = self._build(run_id, event, fields)
            try:
                result, wrote = write((record["n"], canonical_json(record).decode(),
                                       record["hash"]))
            except EvidenceConflict:
                self._heads.pop(run_id, None)
                continue
            if wrote:
                self._heads[run_id] = (record["n"] + 1, record["hash"])
            return result

    def record_entry(self, entry: Entry, **fields: Any) -> Entry:
        """Journal a new entry with its (unsigned: see above) evidence record in one
        transaction; the record names the entry's call (seq, name, argument digest), the digest
        of its output or its error, and `fields` (a model call's model, revision and request
        id). Returns the stored entry: `entry` itself if this call wrote it, else the one another
        writer put there first (which then has its own evidence)."""
        event = ENTRY_EVENTS.get((entry.kind, entry.state))
        if event is None:
            raise ValueError(f"a new {entry.kind} entry does not start as {entry.state}")
        output_digest = None if entry.output is None else sha256_digest(entry.output)
        about = {"seq": entry.seq, "name": entry.name, "arg_digest": entry.arg_digest,
                 "output_digest": output_digest, "error": entry.error, **fields}

        def write(evidence: EvidenceRow) -> tuple[Entry, bool]:
            stored = self.journal.record(entry, evidence)
            return stored, stored is entry

        return self._with_record(entry.run_id, event, about, write)

    def advance(self, run_id: str, seq: int, from_states: tuple[EntryState, ...],
                state: EntryState, event: RunEvent, /, *, output: str | None = None,
                error: str | None = None, **fields: Any) -> bool:
        """Compare-and-set an entry's state and record `event` (with the entry's `seq` and
        `error`, if any), in one transaction: a state change is never on disk without its
        evidence. False when the entry was not in `from_states` (nothing written)."""

        def write(evidence: EvidenceRow) -> tuple[bool, bool]:
            moved = self.journal.advance(run_id, seq, from_states, state, output=output,
                                         error=error, evidence=evidence)
            return moved, moved

        return self._with_record(run_id, event, {"seq": seq, **fields, "error": error}, write)

    def start_run(self, run_id: str, flow: str, input_json: str, subject: str | None,
                  owner: tuple[str, str] | None = None, **fields: Any) -> tuple[Run, bool]:
        """Create the run with its first evidence record and its owner (one transaction)."""

        def write(evidence: EvidenceRow) -> tuple[tuple[Run, bool], bool]:
            run, created = self.journal.create_run(run_id, flow, input_json, subject, evidence,
                                                   owner)
            return (run, created), created

        self._heads.setdefault(run_id, (0, GENESIS_HASH))  # a new run's chain starts here
        run, created = self._with_record(run_id, RunEvent.RUN_STARTED,
                                         {"flow": flow, **fields}, write)
        if not created:
            self._heads.pop(run_id, None)  # it existed: its chain is in the journal
        return run, created

    def set_status(self, run_id: str, status: RunStatus, event: RunEvent, *,
                   result: str | None = None, error: str | None = None,
                   unless: tuple[RunStatus, ...] = (), **fields: Any) -> bool:
        """Move the run's status and record `event` with `fields`, in one transaction."""

        def write(evidence: EvidenceRow) -> tuple[bool, bool]:
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
    """Check the run's chain with `verify_chain` (order, links, hashes, each record's fit to
    its contract) and, given the deployment's public key, its signatures. The chain is open
    while the run is running; its status is read first, so a run finishing meanwhile only adds
    the signed record that closes it."""
    run = journal.get_run(run_id)
    running = run is not None and run.status == RunStatus.RUNNING
    chain = verify_chain(_records(journal, run_id), public_key, open_chain=running)
    result = RunVerify(run_id, chain.count, chain.errors)
    if chain.count == 0:
        result.errors.append(f"run {run_id} has no evidence records")
    return result


def _records(journal: SqlJournal, run_id: str) -> Iterator[Link]:
    for i, (n, text, stored_hash) in enumerate(journal.evidence(run_id)):
        record, problem = read_record(text, RunEvidenceRecord)
        problems = [problem] if problem else []
        if record is not None:
            if n != i or record["n"] != n or record["run_id"] != run_id:
                problems.append(f"out of place (expected record {i} of {run_id})")
            if stored_hash != record["hash"]:
                problems.append("the journal's hash column does not match the record")
        yield Link(f"record {n}", record, tuple(problems))
