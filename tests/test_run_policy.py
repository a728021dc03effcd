"""The runner's decision points: every tool call and model call of a flow is decided for the
principal that started the run, before anything happens; the decision is in the run's evidence;
a refusal is journaled, so a replay is refused the same way without asking again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agent_flows import ledger

from aruntime.agents.runner import Runner
from aruntime.durable.journal import SqliteJournal, SqlJournal
from aruntime.durable.states import RunStatus
from aruntime.evidence.signing import DeploymentKey
from aruntime.policy.cedar_authorizer import CedarAuthorizer, CedarPolicy
from aruntime.policy.decision import Mode
from aruntime.policy.identity import Principal

# Alice may move up to 5 at a time; nobody in tenant "b" may call transfer at all.
POLICY = """
@id("own-tenant")
permit (principal, action, resource) when { context.tenant == principal.tenant };
@id("small-transfers-only")
forbid (principal, action == ARuntime::Action::"call_tool", resource == ARuntime::Tool::"transfer")
when { context has input && context.input has amount && context.input.amount > 5 };
@id("b-never-transfers")
forbid (principal, action == ARuntime::Action::"call_tool", resource)
when { principal.tenant == "b" };
"""
ALICE = Principal("alice", "a", frozenset({"user"}), "key", "k1")
BOB = Principal("bob", "b", frozenset(), "key", "k2")


@pytest.fixture
def journal(tmp_path: Path) -> SqlJournal:
    return SqliteJournal(tmp_path / "runs.db")


@pytest.fixture
def book(tmp_path: Path) -> str:
    path = str(tmp_path / "ledger.db")
    ledger(path).close()
    return path


def runner_with(journal: SqlJournal, mode: Mode = Mode.ENFORCE) -> Runner:
    authorizer = CedarAuthorizer(CedarPolicy.parse(POLICY, validate=False), mode)
    return Runner(journal, signer=DeploymentKey.generate(), authorizer=authorizer)


def records(journal: SqlJournal, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(text) for _, text, _ in journal.evidence(run_id)]


def moved(book: str) -> int:
    return int(ledger(book).execute("SELECT COALESCE(SUM(amount), 0) FROM effects")
               .fetchone()[0])


def test_a_permitted_call_carries_its_decision_into_the_run_evidence(
        journal: SqlJournal, book: str) -> None:
    runner = runner_with(journal)
    result = runner.start("agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0},
                          run_id="r1", principal=ALICE)
    assert result.status == RunStatus.FAILED  # the third transfer (amount 5) passes, 7 does not
    assert moved(book) == 1 + 3 + 5
    evidence = records(journal, "r1")
    assert evidence[0]["tenant"] == "a" and evidence[0]["principal"] == "alice"
    intents = [r for r in evidence if r["event"] == "tool_intent"]
    assert [r["policy"]["decision"] for r in intents] == ["allow"] * 3
    assert all(r["policy"]["reasons"] == ["own-tenant"] for r in intents)
    assert intents[0]["policy"]["policy_version"] == runner.policy.authorizer.version
    (refused,) = [r for r in evidence if r["event"] == "policy_denied"]
    assert refused["policy"]["decision"] == "deny"
    assert refused["policy"]["reasons"] == ["small-transfers-only"]
    assert "small-transfers-only" in (result.error or "")
    assert runner.verify("r1").ok


def test_a_refusal_is_replayed_from_the_journal_not_decided_again(
        journal: SqlJournal, book: str) -> None:
    runner_with(journal).start("agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0},
                               run_id="r2", principal=BOB)
    assert moved(book) == 0
    # Another policy now (everything allowed): resuming the run answers from its journal.
    permissive = Runner(journal, signer=DeploymentKey.generate(),
                        authorizer=CedarAuthorizer(CedarPolicy.parse(
                            "permit (principal, action, resource);", validate=False)))
    journal.set_status("r2", RunStatus.RUNNING)
    again = permissive.resume("r2")
    assert again.status == RunStatus.FAILED and "b-never-transfers" in (again.error or "")
    assert moved(book) == 0


def test_log_only_records_the_denial_and_lets_the_call_happen(
        journal: SqlJournal, book: str) -> None:
    result = runner_with(journal, Mode.LOG_ONLY).start(
        "agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0}, run_id="r3", principal=BOB)
    assert result.status == RunStatus.COMPLETED and moved(book) == 1 + 3 + 5 + 7 + 9
    intents = [r for r in records(journal, "r3") if r["event"] == "tool_intent"]
    assert [r["policy"]["decision"] for r in intents] == ["deny"] * 5
    assert {r["policy"]["mode"] for r in intents} == {"log-only"}


def test_runs_belong_to_their_tenant(journal: SqlJournal, book: str) -> None:
    runner = runner_with(journal)
    for run_id, who in (("ra", ALICE), ("rb", BOB)):
        runner.start("agent_flows:ask_name", None, run_id=run_id, principal=who)
    runner.start("agent_flows:ask_name", None, run_id="anon")  # nobody: the default tenant
    assert [r.run_id for r in journal.list_runs(tenant="a")] == ["ra"]
    assert [r.run_id for r in journal.list_runs(tenant="default")] == ["anon"]
    assert Runner(journal).policy.owner("rb") == BOB  # read back by another runner


MEMORY_POLICY = """
@id("own-tenant")
permit (principal, action, resource) when { context.tenant == principal.tenant };
@id("guests-write-only")
forbid (principal, action == ARuntime::Action::"read_memory", resource)
when { principal.roles.contains("guest") };
"""


def test_memory_reads_and_writes_are_decided_and_journaled(journal: SqlJournal) -> None:
    authorizer = CedarAuthorizer(CedarPolicy.parse(MEMORY_POLICY))
    runner = Runner(journal, signer=DeploymentKey.generate(), authorizer=authorizer)
    ok = runner.start("agent_flows:notes", {"city": "Lisbon"}, run_id="m1", principal=ALICE)
    assert (ok.status, ok.result) == (RunStatus.COMPLETED, "Lisbon")
    steps = [r for r in records(journal, "m1") if r["event"] == "step_done"]
    assert [(r["name"], r["policy"]["decision"]) for r in steps] == [
        ("write_memory", "allow"), ("read_memory", "allow")]
    guest = Principal("gus", "a", frozenset({"guest"}), "key", "k3")
    refused = runner.start("agent_flows:notes", {"city": "Porto"}, run_id="m2", principal=guest)
    assert refused.status == RunStatus.FAILED and "guests-write-only" in (refused.error or "")
    denied = [r for r in records(journal, "m2") if r["event"] == "step_error"]
    assert denied[0]["policy"]["reasons"] == ["guests-write-only"]
    # what alice wrote is hers: the store keys it by her tenant, user and the flow
    from aruntime.governance.memory import Scope
    item = runner.memory.get(Scope("a", "alice", "agent_flows:notes"), "city")
    assert item is not None and item.value == "Lisbon"


def test_what_no_policy_permits_is_denied(journal: SqlJournal, book: str) -> None:
    only_models = CedarPolicy.parse(
        '@id("models-only") permit (principal, action == ARuntime::Action::"invoke_model", '
        "resource);")
    runner = Runner(journal, signer=DeploymentKey.generate(),
                    authorizer=CedarAuthorizer(only_models))
    result = runner.start("agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0},
                          run_id="d1", principal=ALICE)
    assert result.status == RunStatus.FAILED and "default deny" in (result.error or "")
    (refused,) = [r for r in records(journal, "d1") if r["event"] == "policy_denied"]
    assert refused["policy"]["reasons"] == [] and moved(book) == 0
