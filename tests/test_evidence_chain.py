"""The one hash chain under both evidence logs: its signature rule, the request log and the run
log verified alike, the run evidence contract, and states stored as the text they always were."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from aruntime.agents.runner import Runner
from aruntime.contracts import RunEvent, canonical_json
from aruntime.durable.journal import Entry, SqlJournal
from aruntime.durable.states import EntryKind, EntryState, RunStatus
from aruntime.evidence.chain import GENESIS_HASH, Link, link, verify_chain
from aruntime.evidence.log import EvidenceLog, verify
from aruntime.evidence.runs import ENTRY_EVENTS, RunEvidenceError, verify_run
from aruntime.evidence.signing import DeploymentKey

SRC = Path(__file__).resolve().parents[1] / "src" / "aruntime"


@pytest.fixture
def key() -> DeploymentKey:
    return DeploymentKey.generate()


def chain_of(signers: list[DeploymentKey | None]) -> list[Link]:
    """One record per entry of `signers`, each signed by it (None: left unsigned)."""
    links, prev = [], GENESIS_HASH
    for i, signer in enumerate(signers):
        record = link({"i": i}, prev, signer)
        links.append(Link(f"r{i}", record))
        prev = record["hash"]
    return links


# -- the rule


def test_an_unsigned_record_is_covered_by_a_later_signed_one(key: DeploymentKey) -> None:
    result = verify_chain(chain_of([key, None, None, key]), key.public_key, open_chain=False)
    assert result.ok, result.errors
    assert (result.count, result.signed, result.unsigned) == (4, 2, 2)


def test_only_an_open_chain_may_end_on_unsigned_records(key: DeploymentKey) -> None:
    links = chain_of([key, None, None])
    assert verify_chain(links, key.public_key, open_chain=True).ok
    closed = verify_chain(links, key.public_key, open_chain=False)
    assert closed.errors == ["the records from r1 on are signed by no later record"]
    assert verify_chain(links, None, open_chain=False).ok  # no key: signatures not checked


def test_require_signatures_forbids_unsigned_records(key: DeploymentKey) -> None:
    result = verify_chain(chain_of([key, None, key]), key.public_key, require_signatures=True)
    assert result.errors == ["r1: unsigned record"]


def test_a_bad_signature_covers_nothing(key: DeploymentKey) -> None:
    other = DeploymentKey.generate()
    result = verify_chain(chain_of([None, other]), key.public_key, open_chain=False)
    assert result.errors == [f"r1: signed by another key ({other.key_id}, expected {key.key_id})",
                             "the records from r0 on are signed by no later record"]


# -- both logs, one verifier


def _altered(record: dict[str, Any]) -> str:
    """The record with another (valid) time and its old hash: altered after it was written."""
    return canonical_json({**record, "created_at": "2001-02-03T04:05:06Z"}).decode()


def _problems(errors: list[str]) -> list[str]:
    return [re.sub(r"^(line|record) \d+: ", "", e) for e in errors]


def test_the_request_log_and_the_run_log_are_verified_alike(journal: SqlJournal, tmp_path: Path,
                                                            key: DeploymentKey) -> None:
    from test_evidence import _record

    path = tmp_path / "evidence.jsonl"
    with EvidenceLog(path, key) as log:
        for i in range(3):
            log.append(_record(i))
    runner = Runner(journal, signer=key)
    assert runner.start("agent_flows:async_flow", 20, run_id="c").status == "completed"
    other = DeploymentKey.generate()
    wrong = f"signed by another key ({key.key_id}, expected {other.key_id})"
    assert set(_problems(verify(path, other.public_key).errors)) == {wrong}
    assert set(_problems(verify_run(journal, "c", other.public_key).errors)) == {
        wrong, "the records from record 1 on are signed by no later record"}  # a closed run

    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = _altered(json.loads(lines[1])).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    n, text, _ = journal.evidence("c")[1]
    journal.execute("UPDATE evidence SET record = ? WHERE run_id = ? AND n = ?",
                    (_altered(json.loads(text)), "c", n))
    request, run = verify(path, key.public_key), verify_run(journal, "c", key.public_key)
    assert request.errors == ["line 2: hash mismatch: the record was altered after it was written"]
    assert run.errors == ["record 1: hash mismatch: the record was altered after it was written"]


# -- the run evidence contract


def test_a_run_record_that_does_not_fit_its_contract_is_refused(journal: SqlJournal,
                                                                 key: DeploymentKey) -> None:
    runner = Runner(journal, signer=key)
    assert runner.start("agent_flows:ask_name", None, run_id="w").status == "waiting"
    before = journal.evidence("w")
    with pytest.raises(RunEvidenceError, match=r"human_answer record does not fit "
                                               r"aruntime.run-evidence/v1: decision"):
        runner.evidence.advance("w", 1, (EntryState.WAITING,), EntryState.RESOLVED,
                                RunEvent.HUMAN_ANSWER, output='"x"', by="ann", decision="maybe")
    with pytest.raises(RunEvidenceError, match="colour: Extra inputs are not permitted"):
        runner.evidence.set_status("w", RunStatus.FAILED, RunEvent.RUN_FAILED, colour="red")
    entry, run = journal.entry("w", 1), journal.get_run("w")
    assert entry is not None and entry.state == EntryState.WAITING  # nothing was written
    assert run is not None and run.status == RunStatus.WAITING
    assert journal.evidence("w") == before


def test_a_stored_record_that_does_not_fit_its_contract_fails_verification(
        journal: SqlJournal, key: DeploymentKey) -> None:
    runner = Runner(journal, signer=key)
    runner.start("agent_flows:async_flow", 1, run_id="c")
    n, _, last = journal.evidence("c")[-1]
    record = link({"schema": "aruntime.run-evidence/v1", "run_id": "c", "n": n + 1,
                   "event": "run_completed", "created_at": "2025-01-02T03:04:05Z",
                   "colour": "red"}, last, key)
    assert journal.append_evidence("c", n + 1, canonical_json(record).decode(), record["hash"])
    check = verify_run(journal, "c", key.public_key)
    assert check.errors == [f"record {n + 1}: not an aruntime.run-evidence/v1 record "
                            "(colour: Extra inputs are not permitted)"]


def test_journaled_step_records_are_the_unsigned_ones(journal: SqlJournal,
                                                      key: DeploymentKey, tmp_path: Path) -> None:
    from agent_flows import ledger

    book = str(tmp_path / "ledger.db")
    ledger(book).close()
    runner = Runner(journal, signer=key)
    runner.start("agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0}, run_id="t")
    records = [json.loads(text) for _, text, _ in journal.evidence("t")]
    assert all(("signature" in r) != RunEvent(r["event"]).journaled_step for r in records)
    assert {e for e in RunEvent if e.journaled_step} == set(ENTRY_EVENTS.values())


# -- states: enums in the code, the same text on disk and in JSON


def test_states_are_stored_and_written_as_their_text(journal: SqlJournal) -> None:
    journal.create_run("r", "flows:f", "{}")
    journal.record(Entry("r", 1, EntryKind.TOOL, "t", "d", EntryState.INTENT))
    assert journal.advance("r", 1, (EntryState.INTENT,), EntryState.TIMED_OUT)
    assert journal.set_status("r", RunStatus.UNKNOWN)
    assert journal.query("SELECT status FROM runs") == [("unknown",)]
    assert journal.query("SELECT kind, state FROM entries") == [("tool", "timed_out")]
    run, entry = journal.get_run("r"), journal.entry("r", 1)
    assert run is not None and run.status is RunStatus.UNKNOWN
    assert entry is not None and (entry.kind, entry.state) == (EntryKind.TOOL,
                                                               EntryState.TIMED_OUT)
    assert canonical_json([run.status, RunEvent.RUN_STARTED]) == b'["unknown","run_started"]'


def test_no_module_but_the_journal_has_sql_on_its_tables() -> None:
    sql = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE(?: IF NOT EXISTS)?)\s+"
                     r"(?:runs|entries|evidence)\b")
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in sorted(SRC.rglob("*.py"))
                 if p.parent.name != "durable"
                 for i, line in enumerate(p.read_text().splitlines(), start=1)
                 if sql.search(line)]
    assert offenders == []
