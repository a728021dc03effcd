"""The hash chain both evidence logs keep, held once: the request log (evidence/log.py, a JSONL
file) and each run's log (evidence/runs.py, rows of the journal).

A record is a JSON object. `link` chains it to the one before: `prev_hash` is that record's
`hash` (`GENESIS_HASH` for the first), `hash` is `evidence_hash` of the record (sha256 over its
canonical JSON without `hash` and `signature`, so it covers every other field, `prev_hash`
included) and, with a signer, `signature` is `"<key id>:<base64url Ed25519 signature>"` over
the ASCII bytes of `hash`, e.g. `"ed25519:0123456789abcdef:MEUCIQ…"`.

`verify_chain` checks a sequence of records, whichever log read them: each is well formed and
fits its contract, its hash is its own, it links to the one before, and, given the deployment's
public key, its signature verifies. One signature rule for both logs:

- every record is signed, except that a record may be left unsigned when a later record with a
  valid signature covers it through the chain;
- only a chain still open (the request log, which the server goes on appending to; a run still
  running) may end on unsigned records;
- `require_signatures` forbids unsigned records at all.

The chain shows removed, inserted and reordered records; the signatures show who wrote them.
Records cut from the end leave a shorter chain that is still whole: only a hash remembered from
before (`anchor`, e.g. the `head` the server reports) shows that.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from aruntime.contracts import StrictModel, evidence_hash, validation_message
from aruntime.evidence.signing import DeploymentKey, key_id, verify_signature

GENESIS_HASH = "sha256:" + "0" * 64


def sign_record_hash(signer: DeploymentKey, record_hash: str) -> str:
    """A record's `signature`: the signer's key id, a colon, the signature of the hash."""
    return f"{signer.key_id}:{signer.sign(record_hash.encode('ascii'))}"


def link(record: Mapping[str, Any], prev_hash: str,
         signer: DeploymentKey | None = None) -> dict[str, Any]:
    """`record` chained after the record whose hash is `prev_hash`: a copy with `prev_hash` and
    `hash` set and, given `signer`, `signature` (any other key the record has stays as it is)."""
    linked = {**record, "prev_hash": prev_hash}
    linked["hash"] = evidence_hash(linked)
    if signer is not None:
        linked["signature"] = sign_record_hash(signer, linked["hash"])
    return linked


def read_record(raw: str | bytes,
                contract: type[StrictModel]) -> tuple[dict[str, Any] | None, str | None]:
    """One stored record as JSON, or None and why it is not a chained record of `contract`.
    The JSON as stored is what the chain hashes, not the model's re-dump of it."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        return None, f"malformed JSON ({exc})"
    if not isinstance(data, dict):
        return None, "malformed: not a JSON object"
    try:
        contract.model_validate(data)
    except ValidationError as exc:
        name = contract.model_fields["schema_"].default
        return None, f"not an {name} record ({validation_message(exc)})"
    if not data.get("hash") or not data.get("prev_hash"):
        return None, "record has no hash or prev_hash"
    return data, None


@dataclass(frozen=True, slots=True)
class Link:
    """One record as a log read it, for `verify_chain`."""

    where: str  # how errors name it: "line 3", "record 2"
    record: dict[str, Any] | None  # from `read_record`; None when it could not be read
    problems: tuple[str, ...] = ()  # what the log found reading it (a torn line, a misplaced row)


@dataclass
class ChainResult:
    ok: bool
    count: int
    errors: list[str] = field(default_factory=list)
    signed: int = 0  # signatures that verified against the key given
    unsigned: int = 0
    key_id: str | None = None  # the key signatures were checked against
    head: str | None = None  # the last well-formed record's hash


def verify_chain(links: Iterable[Link], public_key: Ed25519PublicKey | None = None, *,
                 require_signatures: bool = False, open_chain: bool = True,
                 anchor: str | None = None) -> ChainResult:
    """Check each record in order (see the module's docstring for the rules). Errors name the
    record by its `where`. After a record that could not be read the next link is not checked
    (there is nothing to check it against), so one bad record gives one error."""
    result = ChainResult(ok=False, count=0, key_id=key_id(public_key) if public_key else None)
    expected: str | None = GENESIS_HASH
    before = ""  # how errors name the record before
    uncovered: str | None = None  # the first unsigned record no later signature covers yet
    found_anchor = anchor is None
    for item in links:
        result.count += 1
        result.errors.extend(f"{item.where}: {p}" for p in item.problems)
        record = item.record
        if record is None:
            expected = None
            continue
        problems = _link_problems(record, expected, before, first=result.count == 1)
        status, problem = _signature(record, public_key, result.key_id, require_signatures)
        if status == "valid":
            result.signed, uncovered = result.signed + 1, None
        elif status == "unsigned":
            result.unsigned, uncovered = result.unsigned + 1, uncovered or item.where
        result.errors.extend(f"{item.where}: {p}" for p in [*problems, problem] if p)
        expected = result.head = record["hash"]
        before = item.where
        found_anchor = found_anchor or record["hash"] == anchor
    if public_key is not None and uncovered is not None and not open_chain:
        result.errors.append(f"the records from {uncovered} on are signed by no later record")
    if not found_anchor:
        result.errors.append(f"no record has the anchor hash {anchor}: records were cut from "
                             "the end of the chain, or this is another log")
    result.ok = not result.errors
    return result


def _link_problems(record: dict[str, Any], expected: str | None, before: str,
                   first: bool) -> list[str]:
    problems = []
    if evidence_hash(record) != record["hash"]:
        problems.append("hash mismatch: the record was altered after it was written")
    if expected is not None and record["prev_hash"] != expected:
        if first:
            problems.append("prev_hash is not the genesis hash: the head of the chain is missing")
        else:
            problems.append(f"prev_hash does not match {before}'s hash: "
                            "records were removed, inserted or reordered")
    return problems


def _signature(record: dict[str, Any], public_key: Ed25519PublicKey | None,
               expected_id: str | None, required: bool) -> tuple[str, str | None]:
    """(status, problem): status is "valid", "unsigned", "unchecked" (no key) or "bad"."""
    signature = record.get("signature")
    if signature is None:
        return "unsigned", "unsigned record" if required else None
    if public_key is None:
        return "unchecked", None
    claimed, _, value = signature.rpartition(":")
    if not claimed.startswith("ed25519:"):
        return "bad", "bad signature: not '<key id>:<base64url signature>'"
    if claimed != expected_id:
        return "bad", f"signed by another key ({claimed}, expected {expected_id})"
    if not verify_signature(public_key, record["hash"].encode("ascii"), value):
        return "bad", "bad signature: it does not sign this record's hash"
    return "valid", None
