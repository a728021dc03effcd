"""Erasing a subject from every store, and the signed receipt that says so.

`erase_subject` shreds the subject's key (from then on every sealed copy anywhere is noise),
deletes its memory items, deletes its artifacts, and has the journal overwrite the payloads of
its runs with a tombstone, `erased:<receipt id>`, so not even ciphertext stays. On SQLite the
journal's connections zero freed rows (secure_delete) and the journal truncates its WAL after;
on PostgreSQL dead rows stay on disk, sealed under a shredded key, until VACUUM.

Each store is changed through its own methods; the journal's tables only through the journal's
(`subject_runs`, `run_payloads`, `runs_with_output`, `blank_run`, `checkpoint_wal`). The order
lets a retry after a crash finish the job: the key first; artifacts before the journal, since
the journal's references are how they are found; each run is blanked in one transaction that
also replaces its `subject` with the subject's digest, so a run not yet blanked is found again.
What stays: run ids, step names, argument digests and idempotency keys, and the evidence chain
(salted digests only, by design).

The receipt is canonical JSON naming the subject only by its digest, signed with the deployment
key; `verify_receipt` checks it with the public key alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.contracts.base import canonical_json
from aruntime.durable.journal import SqlJournal
from aruntime.evidence.signing import DeploymentKey, key_id, verify_signature
from aruntime.governance.artifacts import REF_RE, ArtifactStore
from aruntime.governance.memory import MemoryStore
from aruntime.governance.subject_keys import SEALED_PREFIX, SubjectKeys
from aruntime.timeutil import rfc3339, utc_now

RECEIPT_KIND = "aruntime.deletion-receipt/v1"


class LegalHoldError(Exception):
    """The subject has data under legal hold; erasure needs `release_holds=True`."""


@dataclass(frozen=True, slots=True)
class DeletionReceipt:
    body: Mapping[str, Any]  # everything but the signature
    signature: str  # the deployment key's signature over canonical_json(body)

    @property
    def receipt_id(self) -> str:
        return str(self.body["receipt_id"])

    def to_dict(self) -> dict[str, Any]:
        return {**self.body, "signature": self.signature}

    def to_json(self) -> str:
        return canonical_json(self.to_dict()).decode("utf-8")


TOMBSTONE = "erased:"  # what a blanked payload starts with, before the receipt's id


def erase_subject(subject: str, journal: SqlJournal, keys: SubjectKeys, memory: MemoryStore,
                  artifacts: ArtifactStore, signer: DeploymentKey, *,
                  release_holds: bool = False, scan_artifacts: bool = True) -> DeletionReceipt:
    """Erase `subject` everywhere; idempotent. Refuses (LegalHoldError, before changing
    anything) while memory holds its items under legal hold, unless `release_holds`.
    `scan_artifacts` also finds the subject's sealed artifacts that no journal row names (a
    put whose entry was never written) by reading every artifact's header."""
    held = memory.held(subject)
    if held and not release_holds:
        raise LegalHoldError(f"{held} memory item(s) of this subject are under legal hold")
    sid, receipt_id = keys.digest(subject), f"del-{uuid.uuid4().hex}"
    run_ids = journal.subject_runs(subject, sid)
    refs = _referenced(journal, run_ids)
    shredded = keys.shred(subject).had_key
    items = memory.erase(subject)
    deleted, kept = _erase_artifacts(artifacts, journal, refs, sid, run_ids, scan_artifacts)
    cancelled, entries = _blank_runs(journal, run_ids, f"{TOMBSTONE}{receipt_id}", sid)
    body = {
        "kind": RECEIPT_KIND, "receipt_id": receipt_id, "subject_digest": sid,
        "erased_at": rfc3339(utc_now()), "key_id": signer.key_id,
        "stores": {
            "subject_keys": {"keys_shredded": int(shredded)},
            "memory": {"items_deleted": items, "legal_holds_released": held},
            "artifacts": {"deleted": deleted, "kept_shared": kept},
            "journal": {"runs_blanked": len(run_ids), "runs_cancelled": cancelled,
                        "entries_blanked": entries, "wal_checkpoint": journal.checkpoint_wal()},
        },
    }
    return DeletionReceipt(body, signer.sign(canonical_json(body)))


def verify_receipt(receipt: DeletionReceipt | Mapping[str, Any] | str | bytes,
                   public_key: Ed25519PublicKey) -> bool:
    """Whether `receipt` (the object, or its JSON) is intact and signed by `public_key`."""
    try:
        data = (receipt.to_dict() if isinstance(receipt, DeletionReceipt)
                else json.loads(receipt) if isinstance(receipt, (str, bytes)) else dict(receipt))
        if not isinstance(data, dict):
            return False
        signature = data.pop("signature", None)
        body = canonical_json(data)
    except (ValueError, TypeError):  # not JSON, not UTF-8, NaN
        return False
    return (data.get("kind") == RECEIPT_KIND and data.get("key_id") == key_id(public_key)
            and isinstance(signature, str)
            and verify_signature(public_key, body, signature))  # one spelling per signature


def _referenced(journal: SqlJournal, run_ids: list[str]) -> set[str]:
    """The artifact references anywhere in the runs' payloads."""
    return {m.group(0) for run_id in run_ids for text in journal.run_payloads(run_id)
            for m in REF_RE.finditer(text)}


def _erase_artifacts(artifacts: ArtifactStore, journal: SqlJournal, refs: set[str], sid: str,
                     run_ids: list[str], scan: bool) -> tuple[int, int]:
    """Delete the subject's artifacts: those sealed for it, and clear ones its runs reference
    that no other run's entry does. Another subject's sealed artifacts stay. (deleted, kept)"""
    header = f"{SEALED_PREFIX}{sid}:".encode("ascii")
    found = set(artifacts.refs_starting_with(header)) if scan else set()
    deleted = kept = 0
    for ref in sorted(refs | found):
        if ref not in found:  # only referenced: whose is it?
            head = artifacts.head(ref, len(header))
            if head != header and (head.startswith(SEALED_PREFIX.encode("ascii"))
                                   or _referenced_elsewhere(journal, ref, run_ids)):
                kept += 1  # another subject's, or clear content another run read too
                continue
        deleted += artifacts.delete(ref)
    return deleted, kept


def _referenced_elsewhere(journal: SqlJournal, ref: str, run_ids: list[str]) -> bool:
    return any(r not in run_ids for r in journal.runs_with_output(ref))


def _blank_runs(journal: SqlJournal, run_ids: list[str], tombstone: str,
                sid: str) -> tuple[int, int]:
    """Cancel the runs still going and overwrite their payloads, one transaction a run.
    (cancelled, entries blanked)"""
    cancelled = entries = 0
    for run_id in run_ids:
        was_cancelled, blanked = journal.blank_run(run_id, tombstone, sid)
        cancelled, entries = cancelled + was_cancelled, entries + blanked
    return cancelled, entries

