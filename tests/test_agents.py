"""Durable agent runs on real journals (SQLite and PostgreSQL): replay, determinism errors, tool
calls with approvals bound to digests, human waits with timeouts, evidence, retention, the CLI
and HTTP faces, and a chaos harness that SIGKILLs a flow at 200 random points."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_flows import ledger

from aruntime.agents.flow import DeterminismError
from aruntime.agents.runner import RunError, Runner
from aruntime.contracts import sha256_digest
from aruntime.durable.journal import SqliteJournal, SqlJournal
from aruntime.evidence.runs import verify_run
from aruntime.evidence.signing import DeploymentKey
from aruntime.timeutil import parse_rfc3339

TESTS = Path(__file__).parent


@pytest.fixture
def signer() -> DeploymentKey:
    return DeploymentKey.generate()


@pytest.fixture
def runner(journal: SqlJournal, signer: DeploymentKey) -> Runner:
    return Runner(journal, signer=signer)


@pytest.fixture
def book(tmp_path: Path) -> str:
    path = str(tmp_path / "ledger.db")
    ledger(path).close()
    return path


def executions(book: str, run: str) -> list[int]:
    return [r[0] for r in ledger(book).execute(
        "SELECT step FROM executions WHERE run = ? ORDER BY at", (run,))]


def effects(book: str) -> dict[str, tuple[int, int]]:
    return {k: (a, n) for k, a, n in ledger(book).execute(
        "SELECT key, amount, invocations FROM effects")}


def test_a_run_completes_and_its_evidence_verifies(runner: Runner, book: str,
                                                   signer: DeploymentKey) -> None:
    r = runner.start("agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0}, run_id="r1")
    assert r.status == "completed" and r.result == {"total": 385, "moved": 25}
    assert executions(book, "r1") == list(range(1, 11))
    assert sorted(a for a, _ in effects(book).values()) == [1, 3, 5, 7, 9]
    check = verify_run(runner.journal, "r1", signer.public_key)
    assert check.ok, check.errors
    other = DeploymentKey.generate().public_key
    assert not verify_run(runner.journal, "r1", other).ok  # signed by this deployment only


def test_every_tool_record_names_its_call(runner: Runner, book: str) -> None:
    runner.start("agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0}, run_id="t")
    records = [json.loads(rec) for _, rec, _ in runner.journal.evidence("t")]
    tools = [r for r in records if r["event"].startswith("tool_")]
    assert {r["event"] for r in tools} == {"tool_intent", "tool_attempt", "tool_done"}
    assert all(isinstance(r.get("seq"), int) for r in tools)


def test_resuming_replays_the_journal_without_running_steps_again(runner: Runner,
                                                                  book: str) -> None:
    first = runner.start("agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0}, run_id="r")
    again = runner.start("agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0}, run_id="r")
    assert again.result == first.result  # starting under the same id is idempotent
    runner.journal.set_status("r", "running")  # as if a process died at the very end
    assert runner.resume("r").result == first.result
    assert executions(book, "r") == list(range(1, 11))  # no step ran twice
    assert all(n == 1 for _, n in effects(book).values())  # no transfer called twice
    with pytest.raises(RunError, match="another input"):
        runner.start("agent_flows:ten_steps", {"ledger": book, "pause_s": 1.0}, run_id="r")


def test_a_changed_step_under_a_running_flow_is_a_determinism_error_naming_it(
        runner: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    r = runner.start("agent_flows:drifting", {"text": "Hi"}, run_id="d")
    assert r.status == "waiting"
    monkeypatch.setenv("AGENT_FLOWS_DRIFT", "1")
    with pytest.raises(DeterminismError, match=r"call 1 is step '_whisper'.*recorded step "
                                               r"'_shout'"):
        runner.respond("d", 2, {}, "tester")
    assert runner.journal.get_run("d").status == "running"  # left for the fixed code
    monkeypatch.delenv("AGENT_FLOWS_DRIFT")
    assert runner.resume("d").result == "HI!"


def test_a_failing_step_fails_the_run_and_replays_as_the_same_failure(runner: Runner) -> None:
    r = runner.start("agent_flows:failing", None, run_id="f")
    assert r.status == "failed" and "ValueError: boom" in (r.error or "")
    assert runner.resume("f").status == "failed"


def test_an_approval_binds_to_the_digest_of_what_is_approved(runner: Runner, book: str) -> None:
    r = runner.start("agent_flows:approve_then_pay", {"ledger": book}, run_id="a")
    assert r.status == "waiting"
    wait = runner.journal.entry("a", 2)
    approves = json.loads(wait.detail)["approves"]
    assert approves == sha256_digest({"pay": 1, "to": "acme"})
    other = sha256_digest({"pay": 1000, "to": "acme"})
    with pytest.raises(RunError, match="refused"):
        runner.respond("a", 2, {"approved": True}, "mallory", other)
    with pytest.raises(RunError, match="does not fit"):
        runner.respond("a", 2, {"ok": True}, "alice", approves)
    r = runner.respond("a", 2, {"approved": True}, "alice", approves)
    assert r.status == "waiting" and "awaits approval" in (r.waiting or "")  # the tool's turn
    call = runner.journal.entry("a", 3)
    assert call.state == "intent" and effects(book) == {}
    with pytest.raises(RunError, match="refused"):
        runner.approve("a", 3, sha256_digest({"tool": "transfer_approved", "args": {}}), "bob")
    r = runner.approve("a", 3, call.arg_digest, "bob")
    assert r.status == "completed" and r.result == {"paid": 2}
    with pytest.raises(RunError, match="not awaiting approval"):
        runner.approve("a", 3, call.arg_digest, "bob")  # decided once
    events = [json.loads(rec)["event"] for _, rec, _ in runner.journal.evidence("a")]
    assert events.count("human_answer") == 1 and "approval" in events


def test_a_rejected_tool_call_fails_the_run(runner: Runner, book: str) -> None:
    runner.start("agent_flows:approve_then_pay", {"ledger": book}, run_id="x")
    runner.respond("x", 2, {"approved": True}, "alice",
                   json.loads(runner.journal.entry("x", 2).detail)["approves"])
    r = runner.reject("x", 3, "bob", "too much")
    assert r.status == "failed" and "rejected by bob: too much" in (r.error or "")
    assert effects(book) == {}


def test_a_wait_past_its_deadline_takes_the_declared_path(runner: Runner, book: str) -> None:
    r = runner.start("agent_flows:approve_then_pay", {"ledger": book, "timeout_s": 0.0},
                     run_id="t")
    assert r.status == "completed" and r.result == {"paid": 0, "why": "not approved"}
    assert runner.journal.entry("t", 2).state == "timed_out"


def test_recover_resumes_interrupted_runs_and_expired_waits(runner: Runner, book: str) -> None:
    runner.journal.create_run("lost", "agent_flows:ten_steps",
                              json.dumps({"ledger": book, "pause_s": 0.0}))
    waiting = runner.start("agent_flows:approve_then_pay", {"ledger": book, "timeout_s": 3600},
                           run_id="w")
    assert waiting.status == "waiting"
    results = {r.run_id: r.status for r in runner.recover()}
    assert results == {"lost": "completed"}  # the wait has an hour to go: left alone


def test_input_waits_check_the_answer_against_their_schema(runner: Runner) -> None:
    assert runner.start("agent_flows:ask_name", None, run_id="n").status == "waiting"
    with pytest.raises(RunError, match="does not fit"):
        runner.respond("n", 1, {"name": 3}, "ann")
    assert runner.respond("n", 1, {"name": "Ann"}, "ann").result == "hello Ann"


def test_async_flows_and_cancel(runner: Runner) -> None:
    assert runner.start("agent_flows:async_flow", 20, run_id="as").result == 41
    runner.start("agent_flows:ask_name", None, run_id="c")
    assert runner.cancel("c").status == "cancelled"
    assert runner.resume("c").status == "cancelled"  # a cancelled run is not revived


def test_compaction_and_retention(runner: Runner, book: str) -> None:
    runner.start("agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0}, run_id="old")
    runner.start("agent_flows:ask_name", None, run_id="live")
    assert runner.journal.compact("old") == 15
    assert runner.journal.get_run("old").compacted and runner.journal.entries("old") == []
    assert verify_run(runner.journal, "old").ok  # the evidence outlives the entries
    assert runner.journal.prune("9999-01-01T00:00:00Z") == ["old"]
    assert runner.journal.get_run("old") is None and runner.journal.get_run("live") is not None


def test_model_calls_go_through_the_engine_and_name_its_revision(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    from aruntime.agents.models import LocalModels

    models = LocalModels(tiny_model_dir, device="cpu")
    runner = Runner(SqliteJournal(tmp_path / "j.db"), models=models)
    r = runner.start("agent_flows:ask_model", "hello", run_id="m")
    assert r.status == "completed" and len(r.result["token_ids"]) == 4
    assert r.result["model_revision"].startswith("sha256:")
    model_events = _model_events(runner.journal, "m")
    assert model_events[0]["model_revision"] == r.result["model_revision"]
    assert runner.resume("m").result == r.result
    models.close()


def _model_events(journal: SqlJournal, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(rec) for _, rec, _ in journal.evidence(run_id)
            if json.loads(rec)["event"] == "model_done"]


def test_a_served_flow_calls_the_served_model_on_the_servers_path(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """On `serve --model X`, a run's model call is answered by X through the server's own
    client: the run's evidence names X, its revision and the request that the server's own
    evidence log records (it used to load the demo model in the flow's process)."""
    from tiny_engine import config

    from aruntime.evidence.log import verify
    from aruntime.serve.launch import background_server

    sys.path.insert(0, str(TESTS))
    data = tmp_path / "data"
    with background_server(config(tiny_model_dir), data, served_model_name="tiny-x") as srv:
        card = httpx.get(f"{srv.url}/v1/models").json()["data"][0]
        r = httpx.post(f"{srv.url}/v1/runs", timeout=120, json={
            "flow": "agent_flows:ask_model", "input": "hello", "run_id": "served"})
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        result = r.json()["result"]
        metrics = httpx.get(f"{srv.url}/metrics").text
    assert result["model"] == "tiny-x" and result["model_revision"] == card["aruntime"]["revision"]
    assert len(result["token_ids"]) == 4
    [event] = _model_events(SqliteJournal(data / "runs.db"), "served")
    assert (event["model"], event["model_revision"]) == ("tiny-x", card["aruntime"]["revision"])
    records = [json.loads(line) for line in (data / "evidence.jsonl").read_text().splitlines()]
    [record] = [rec for rec in records if rec["request_id"] == result["request_id"]]
    assert record["model"] == "tiny-x" and record["usage"]["completion_tokens"] == 4
    assert record["route"]["worker"]  # it went the way an HTTP request goes
    assert verify(data / "evidence.jsonl").ok
    assert 'aruntime:request_success_total{finished_reason="length",model_name="tiny-x"}' \
        in metrics


def test_aruntime_run_calls_the_model_it_is_given(tiny_model_dir: Path, tmp_path: Path) -> None:
    p = cli("run", "agent_flows:ask_model", "--input", '"hello"', "--run-id", "m1",
            "--model", str(tiny_model_dir), home=tmp_path)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)["result"]
    assert result["model"] == tiny_model_dir.name and len(result["token_ids"]) == 4
    [event] = _model_events(SqliteJournal(tmp_path / "data" / "runs.db"), "m1")
    assert event["model"] == tiny_model_dir.name
    assert event["model_revision"] == result["model_revision"]
    bad = cli("run", "agent_flows:ask_model", "--model", str(tmp_path / "nowhere"), home=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


# -- the command line and HTTP faces

def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARUNTIME_HOME": str(home), "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "aruntime.cli", *args], env=env, cwd=TESTS,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_runs_a_flow_and_refuses_bad_input_with_exit_2(tmp_path: Path, book: str) -> None:
    p = cli("run", "agent_flows:approve_then_pay", "--input", json.dumps({"ledger": book}),
            "--run-id", "c1", home=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "waiting"
    show = json.loads(cli("runs", "show", "c1", home=tmp_path).stdout)
    approves = show["entries"][1]["detail"]["approves"]
    bad = cli("runs", "respond", "c1", "2", "--answer", '{"approved": true}', "--digest",
              "sha256:" + "0" * 64, home=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "refused" in bad.stderr
    for args in (("run", "agent_flows:nope"), ("run", "agent_flows:ask_name", "--input", "{x"),
                 ("runs", "show", "missing"), ("runs", "approve", "c1", "9", "--digest", "d")):
        p = cli(*args, home=tmp_path)
        assert p.returncode == 2 and p.stderr.startswith("aruntime: error:"), (args, p.stderr)
    ok = cli("runs", "respond", "c1", "2", "--answer", '{"approved": false}', "--digest",
             approves, home=tmp_path)
    assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "completed"
    verified = cli("runs", "verify", "c1", home=tmp_path)
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"]


@pytest.fixture
def server_factory(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Any]:
    from tiny_engine import config

    from aruntime.serve.launch import background_server

    sys.path.insert(0, str(TESTS))

    def start() -> Any:
        return background_server(config(tiny_model_dir), tmp_path / "data")

    yield start


def test_a_human_wait_survives_a_server_restart(server_factory: Any, book: str) -> None:
    with server_factory() as srv:
        r = httpx.post(f"{srv.url}/v1/runs", json={
            "flow": "agent_flows:approve_then_pay", "input": {"ledger": book}, "run_id": "h"},
            timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "waiting"
        approves = httpx.get(f"{srv.url}/v1/runs/h").json()["entries"][1]["detail"]["approves"]
    with server_factory() as srv:  # a new process's worth of server on the same data
        assert httpx.get(f"{srv.url}/v1/runs/h").json()["status"] == "waiting"
        wrong = httpx.post(f"{srv.url}/v1/runs/h/calls/2/respond", timeout=60, json={
            "answer": {"approved": True}, "digest": "sha256:" + "1" * 64})
        assert wrong.status_code == 400 and "refused" in wrong.json()["error"]["message"]
        assert httpx.get(f"{srv.url}/v1/runs/nope").status_code == 404
        r = httpx.post(f"{srv.url}/v1/runs/h/calls/2/respond", timeout=60, json={
            "answer": {"approved": True}, "digest": approves, "by": "alice"})
        assert r.json()["status"] == "waiting"  # now the transfer awaits its own approval
        call = httpx.get(f"{srv.url}/v1/runs/h").json()["entries"][2]
        r = httpx.post(f"{srv.url}/v1/runs/h/calls/3/approve", timeout=60,
                       json={"digest": call["arg_digest"], "by": "bob"})
        assert r.json() == {"run_id": "h", "status": "completed", "result": {"paid": 2}}
        assert httpx.get(f"{srv.url}/v1/runs/h/verify").json()["ok"]


# -- chaos

def test_chaos_sigkill_at_200_random_points(tmp_path: Path) -> None:
    """Kill `aruntime run` with SIGKILL at random moments and start it again until the run
    completes; over 200 kills, no completed step runs again and no effect happens twice."""
    book, home, journal = str(tmp_path / "ledger.db"), tmp_path / "home", tmp_path / "runs.db"
    ledger(book).close()
    env = {**os.environ, "ARUNTIME_HOME": str(home), "PYTHONPATH": str(TESTS)}
    rng = random.Random(20261127)
    inp = json.dumps({"ledger": book, "pause_s": 0.004})

    def launch(run_id: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "aruntime.cli", "run",
                                 "agent_flows:ten_steps", "--input", inp, "--run-id", run_id,
                                 "--journal", str(journal)], env=env, cwd=TESTS,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    t0 = time.monotonic()
    probe = launch("probe")
    assert probe.wait(timeout=120) == 0, probe.stderr.read()  # type: ignore[union-attr]
    full = time.monotonic() - t0
    kills, runs = 0, 0
    while kills < 200:
        run_id, runs = f"chaos-{runs}", runs + 1
        while True:
            proc = launch(run_id)
            try:
                proc.wait(timeout=rng.uniform(0.0, full))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                kills += 1
                continue
            out = proc.stdout.read()  # type: ignore[union-attr]
            assert proc.returncode == 0, proc.stderr.read()  # type: ignore[union-attr]
            assert json.loads(out)["result"] == {"total": 385, "moved": 25}
            break
    j = SqliteJournal(journal)
    unknown = reconciled = 0
    for n in range(runs):
        run_id = f"chaos-{n}"
        assert j.get_run(run_id).status == "completed"
        entries = j.entries(run_id)
        assert all(e.state == "done" for e in entries)  # every unknown outcome was settled
        # no step started after its completion was journaled
        done_at = {e.seq: parse_rfc3339(e.updated_at).timestamp() for e in entries
                   if e.kind == "step"}
        steps = sorted(done_at)
        for step, at in ledger(book).execute("SELECT step, at FROM executions WHERE run = ?",
                                             (run_id,)):
            assert at <= done_at[steps[step - 1]], f"{run_id} step {step} ran after it was done"
        events = [json.loads(rec)["event"] for _, rec, _ in j.evidence(run_id)]
        reconciled += events.count("tool_reconciled")
        unknown += events.count("tool_unknown")
        assert verify_run(j, run_id).ok
    book_rows = effects(book)
    assert len(book_rows) == 5 * (runs + 1)  # five transfers a run, the probe's included
    assert all(n == 1 for _, n in book_rows.values()), "a transfer was applied twice"
    assert unknown == 0
    print(f"{kills} kills over {runs} runs; {reconciled} tool calls reconciled after a kill")
    sqlite3.connect(book).close()


def test_a_subjects_run_is_sealed_and_erasing_the_subject_leaves_nothing(
        journal: SqlJournal, signer: DeploymentKey, tmp_path: Path) -> None:
    from test_memory import _db_bytes, _dir_bytes

    from aruntime.governance.artifacts import ArtifactStore
    from aruntime.governance.erasure import erase_subject, verify_receipt
    from aruntime.governance.memory import MemoryStore

    email = "carol.unique@example.com"
    store = ArtifactStore(tmp_path / "artifacts")
    runner = Runner(journal, signer=signer, artifacts=store)
    memory = MemoryStore(journal, runner.keys)
    r = runner.start("agent_flows:remember", {"email": email}, run_id="s", subject="carol")
    assert r.result == email.upper()
    assert runner.resume("s").result == email.upper()  # replay opens what it sealed
    assert any(e.output and e.output.startswith("artifact:") for e in journal.entries("s"))
    for blob in (_db_bytes(journal), _dir_bytes(tmp_path / "artifacts")):
        assert email.encode() not in blob and email.upper().encode() not in blob
    receipt = erase_subject("carol", journal, runner.keys, memory, store, signer)
    assert verify_receipt(receipt, signer.public_key)
    assert runner.resume("s").result is None  # its outcome went with its subject
    for blob in (_db_bytes(journal), _dir_bytes(tmp_path / "artifacts")):
        assert b"carol" not in blob and email.encode() not in blob
    assert verify_run(journal, "s", signer.public_key).ok  # evidence holds digests only


def test_an_answer_given_by_another_runner_is_sealed_under_the_runs_subject(
        journal: SqlJournal, signer: DeploymentKey) -> None:
    from aruntime.governance.subject_keys import is_sealed

    started = Runner(journal, signer=signer)
    assert started.start("agent_flows:ask_name", None, run_id="w",
                         subject="dave").status == "waiting"
    answering = Runner(journal, signer=signer)  # a CLI or a restarted server, say
    assert answering.respond("w", 1, {"name": "Dave"}, "ann").result == "hello Dave"
    entry = journal.entry("w", 1)
    assert entry is not None and is_sealed(entry.output)


def test_a_runner_keeps_few_subjects_and_seals_under_a_forgotten_one(
        journal: SqlJournal, signer: DeploymentKey, monkeypatch: pytest.MonkeyPatch) -> None:
    from aruntime.agents import runner as runner_mod
    from aruntime.governance.subject_keys import is_sealed

    monkeypatch.setattr(runner_mod, "SUBJECTS_KEPT", 2)
    runner = Runner(journal, signer=signer)
    for run_id, subject in (("w1", "erin"), ("w2", None), ("w3", "frank")):
        assert runner.start("agent_flows:ask_name", None, run_id=run_id,
                            subject=subject).status == "waiting"
    assert list(runner._subjects) == ["w2", "w3"]  # w1, touched first, is forgotten
    assert runner.respond("w1", 1, {"name": "Erin"}, "ann").result == "hello Erin"
    entry = journal.entry("w1", 1)
    assert entry is not None and is_sealed(entry.output)  # its subject read again
    assert list(runner._subjects) == ["w3", "w1"]
    assert runner.respond("w2", 1, {"name": "Gus"}, "ann").result == "hello Gus"
    entry = journal.entry("w2", 1)
    assert entry is not None and not is_sealed(entry.output)  # no subject: stored in clear


def test_step_records_are_signed_through_the_next_signed_record(runner: Runner, book: str,
                                                                signer: DeploymentKey) -> None:
    runner.start("agent_flows:ten_steps", {"ledger": book, "pause_s": 0.0}, run_id="v")
    records = [json.loads(rec) for _, rec, _ in runner.journal.evidence("v")]
    assert {r["event"] for r in records if "signature" not in r} == {"step_done", "tool_intent"}
    assert records[-1]["event"] == "run_completed" and "signature" in records[-1]
    last = records[-1]["n"]
    assert "signature" not in records[-2]  # the last step's record
    runner.journal.execute("DELETE FROM evidence WHERE run_id = ? AND n = ?", ("v", last))
    check = verify_run(runner.journal, "v", signer.public_key)  # cut back to unsigned records
    assert not check.ok and "signed by no later record" in check.errors[-1]
