"""The run journal, the same tests on SQLite and a real PostgreSQL (`journal` fixture)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pg_server import fresh_database
from redis_server import free_port

from aruntime.durable.journal import Entry, JournalError, SqliteJournal, SqlJournal, open_journal
from aruntime.durable.journal_pg import PostgresJournal
from aruntime.timeutil import parse_rfc3339, rfc3339

# A second process on the same journal: `advance` races on a go line, `record` writes an entry
# and then waits to be killed.
CHILD = """
import sys
from aruntime.durable.journal import Entry, open_journal

url, mode, arg = sys.argv[1:4]
j = open_journal(url)
if mode == "advance":
    print("ready", flush=True)
    sys.stdin.readline()
    print(j.advance("r", 1, ("attempt",), "done", output=arg), flush=True)
else:
    j.record(Entry("r", int(arg), "step", "s", "d", "done", output='"kept"'))
    print("recorded", flush=True)
    sys.stdin.readline()
"""


def url_of(j: SqlJournal) -> str:
    return j.url if isinstance(j, PostgresJournal) else str(j.path)  # type: ignore[attr-defined]


def child(j: SqlJournal, mode: str, arg: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, url_of(j), mode, arg],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def read_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise AssertionError(f"child {proc.pid} said nothing in {timeout} s")
    return proc.stdout.readline().strip()


def tool_entry(seq: int = 1, state: str = "attempt") -> Entry:
    return Entry("r", seq, "tool", "search", "digest", state, idem_key="k1")


# -- runs


def test_create_run_is_idempotent_and_refuses_another_input(journal: SqlJournal) -> None:
    first, created = journal.create_run("r", "flows:f", '{"q": 1}', subject="alice")
    again, created_again = journal.create_run("r", "flows:f", '{"q": 1}')
    assert created and not created_again
    assert again == first and again.status == "running" and again.subject == "alice"
    with pytest.raises(JournalError, match="another input"):
        journal.create_run("r", "flows:f", '{"q": 2}')
    with pytest.raises(JournalError):
        journal.create_run("r", "flows:other", '{"q": 1}')
    assert journal.get_run("nope") is None


def test_set_status_unless_guard(journal: SqlJournal) -> None:
    journal.create_run("r", "flows:f", "{}")
    assert journal.set_status("r", "cancelled")
    # a late worker finishing the run must not revive a cancelled one
    assert not journal.set_status("r", "completed", result="1", unless=("cancelled",))
    run = journal.get_run("r")
    assert run is not None and run.status == "cancelled" and run.result is None
    assert journal.set_status("r", "failed", error="boom", unless=("completed", "running"))
    run = journal.get_run("r")
    assert run is not None and (run.status, run.error) == ("failed", "boom")
    assert not journal.set_status("missing", "completed")
    with pytest.raises(ValueError, match="unknown run status"):
        journal.set_status("r", "done")


def test_list_runs_by_status(journal: SqlJournal) -> None:
    for run_id in ("a", "b", "c", "d"):
        journal.create_run(run_id, "flows:f", "{}")
    journal.set_status("b", "completed", result="2")
    journal.set_status("d", "completed", result="4")
    assert [r.run_id for r in journal.list_runs("completed")] == ["d", "b"]  # newest first
    assert [r.run_id for r in journal.list_runs("running")] == ["c", "a"]
    assert journal.list_runs("waiting") == []
    assert [r.run_id for r in journal.list_runs(limit=3)] == ["d", "c", "b"]


# -- entries


def test_record_returns_the_stored_entry_untouched(journal: SqlJournal) -> None:
    journal.create_run("r", "flows:f", "{}")
    first = journal.record(Entry("r", 1, "step", "fetch", "d1", "done", output='"first"'))
    late = journal.record(Entry("r", 1, "step", "other", "d2", "error", error="late"))
    assert late == first and late.output == '"first"' and late.name == "fetch"
    journal.record(Entry("r", 0, "model", "m", "d0", "done", output="0"))
    assert [e.seq for e in journal.entries("r")] == [0, 1]
    assert journal.entry("r", 7) is None


def test_advance_is_compare_and_set(journal: SqlJournal) -> None:
    journal.create_run("r", "flows:f", "{}")
    journal.record(tool_entry(state="intent"))
    assert not journal.advance("r", 1, ("approved",), "attempt")  # wrong state: refused
    assert journal.advance("r", 1, ("intent", "approved"), "attempt", detail='{"try": 1}')
    assert journal.advance("r", 1, ("attempt",), "done", output='"ok"')
    assert not journal.advance("r", 1, ("attempt",), "error", error="late")
    e = journal.entry("r", 1)
    assert e is not None and (e.state, e.output, e.error, e.detail) == (
        "done", '"ok"', None, '{"try": 1}')
    assert not journal.advance("r", 9, ("attempt",), "done")  # no such entry


def test_threads_racing_advance_one_wins(journal: SqlJournal) -> None:
    journal.create_run("r", "flows:f", "{}")
    journal.record(tool_entry())
    n = 8
    barrier, wins = threading.Barrier(n), [False] * n

    def race(i: int) -> None:
        barrier.wait(timeout=30)
        wins[i] = journal.advance("r", 1, ("attempt",), "done", output=f'"{i}"')

    threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sum(wins) == 1
    e = journal.entry("r", 1)
    assert e is not None and e.state == "done" and e.output == f'"{wins.index(True)}"'


def test_processes_racing_advance_one_wins(journal: SqlJournal) -> None:
    journal.create_run("r", "flows:f", "{}")
    journal.record(tool_entry())
    procs = [child(journal, "advance", f'"p{i}"') for i in range(3)]
    try:
        assert [read_line(p) for p in procs] == ["ready"] * 3
        for p in procs:  # all are connected and waiting: release them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [read_line(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    assert sorted(results) == ["False", "False", "True"]
    e = journal.entry("r", 1)
    assert e is not None and e.output == f'"p{results.index("True")}"'


def test_recorded_entry_survives_sigkill(journal: SqlJournal) -> None:
    journal.create_run("r", "flows:f", "{}")
    proc = child(journal, "record", "3")
    try:
        assert read_line(proc) == "recorded"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # right after record() returned
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    reopened = open_journal(url_of(journal))  # a new connection, as a restarted process has
    try:
        e = reopened.entry("r", 3)
        assert e is not None and e.output == '"kept"'
    finally:
        reopened.close()


# -- evidence


def test_evidence_append_conflict(journal: SqlJournal) -> None:
    journal.create_run("r", "flows:f", "{}")
    assert journal.append_evidence("r", 0, '{"n": 0}', "h0")
    assert not journal.append_evidence("r", 0, '{"n": "other"}', "hx")  # n taken: refused
    assert journal.append_evidence("r", 1, '{"n": 1}', "h1")
    assert journal.evidence("r") == [(0, '{"n": 0}', "h0"), (1, '{"n": 1}', "h1")]


def test_evidence_head_is_the_last_record(journal: SqlJournal) -> None:
    journal.create_run("r", "flows:f", "{}")
    assert journal.evidence_head("r") is None
    journal.append_evidence("r", 0, "{}", "h0")
    journal.append_evidence("r", 1, "{}", "h1")
    assert journal.evidence_head("r") == (1, "h1")


# -- erasure's methods


def test_erasure_finds_a_subjects_runs_and_blanks_each(journal: SqlJournal) -> None:
    journal.create_run("a", "flows:f", '"in-a"', subject="alice")
    journal.create_run("b", "flows:f", '"in-b"', subject="sid:alice")
    journal.create_run("c", "flows:f", '"in-c"', subject="carol")
    journal.record(Entry("a", 1, "step", "s", "d", "done", output="artifact:sha256:ab",
                         detail='{"k": 1}'))
    journal.record(Entry("a", 2, "step", "s", "d", "error", error='"boom"'))
    journal.record(Entry("c", 1, "step", "s", "d", "done", output="artifact:sha256:ab"))
    journal.set_status("b", "completed", result='"out-b"')
    assert journal.subject_runs("alice", "sid:alice") == ["a", "b"]
    assert sorted(journal.run_payloads("a")) == sorted(
        ['"in-a"', "artifact:sha256:ab", '{"k": 1}', '"boom"', "{}"])
    assert journal.runs_with_output("artifact:sha256:ab") == {"a", "c"}
    assert journal.blank_run("a", "erased:x", "sid:alice") == (True, 2)  # running: cancelled
    assert journal.blank_run("b", "erased:x", "sid:alice") == (False, 0)  # finished: stays
    a, b = journal.get_run("a"), journal.get_run("b")
    assert a is not None and (a.status, a.input, a.result, a.error, a.subject) == (
        "cancelled", "erased:x", None, "erased:x", "sid:alice")
    assert b is not None and (b.status, b.input, b.result) == ("completed", "erased:x",
                                                               "erased:x")
    assert [(e.output, e.error, e.detail) for e in journal.entries("a")] == [
        ("erased:x", None, "erased:x"), (None, "erased:x", "erased:x")]  # a NULL stays NULL
    assert journal.subject_runs("alice") == []
    assert journal.run_payloads("c") == ['"in-c"', "artifact:sha256:ab", "{}"]
    assert journal.checkpoint_wal() == ("truncated" if isinstance(journal, SqliteJournal)
                                        else "none")


# -- retention


def fill(journal: SqlJournal, run_id: str, status: str = "running") -> None:
    journal.create_run(run_id, "flows:f", "{}")
    for seq in range(3):
        journal.record(Entry(run_id, seq, "step", "s", "d", "done", output=str(seq)))
    journal.append_evidence(run_id, 0, "{}", "h")
    if status != "running":
        journal.set_status(run_id, status, result="1")


def test_compact_only_finished_runs(journal: SqlJournal) -> None:
    fill(journal, "live")
    fill(journal, "done", "completed")
    with pytest.raises(JournalError, match="not finished"):
        journal.compact("live")
    with pytest.raises(JournalError):
        journal.compact("missing")
    assert journal.compact("done") == 3
    run = journal.get_run("done")
    assert run is not None and run.compacted and run.result == "1"
    assert journal.entries("done") == [] and len(journal.evidence("done")) == 1
    live = journal.get_run("live")
    assert live is not None and not live.compacted and len(journal.entries("live")) == 3


def test_prune_finished_before(journal: SqlJournal) -> None:
    fill(journal, "old", "completed")
    fill(journal, "live")
    old = journal.get_run("old")
    assert old is not None
    cutoff = rfc3339(parse_rfc3339(old.updated_at) + timedelta(microseconds=1))
    fill(journal, "new", "failed")
    assert journal.prune("2000-01-01T00:00:00Z") == []
    assert journal.prune(cutoff) == ["old"]
    assert journal.get_run("old") is None
    assert journal.entries("old") == [] and journal.evidence("old") == []
    assert journal.prune("2999-01-01T00:00:00Z") == ["new"]
    live = journal.get_run("live")  # a running run is never pruned, however old
    assert live is not None and len(journal.entries("live")) == 3
    assert len(journal.evidence("live")) == 1


def test_prune_compares_times_not_their_spelling(journal: SqlJournal) -> None:
    # A run finished at 05.25 s is not "before 05 s", though "…05.250000Z" < "…05Z" as text.
    fill(journal, "r", "completed")
    run = journal.get_run("r")
    assert run is not None
    whole_second = rfc3339(parse_rfc3339(run.updated_at).replace(microsecond=0))
    assert journal.prune(whole_second) == []
    with pytest.raises(ValueError):
        journal.prune("yesterday")


# -- opening


def test_open_journal_dispatches_by_url(tmp_path: Path, postgres_url: str) -> None:
    for target in (tmp_path / "a.db", str(tmp_path / "b.db"), f"sqlite:///{tmp_path}/c.db"):
        j = open_journal(target)
        assert isinstance(j, SqliteJournal) and j.path.parent == tmp_path
        j.close()
    url = fresh_database(postgres_url)
    for spelling in (url, url.replace("postgresql://", "postgres://")):
        j = open_journal(spelling)
        assert isinstance(j, PostgresJournal)
        j.create_run("r", "flows:f", "{}")
        j.close()


def test_journals_opening_a_fresh_database_together(postgres_url: str) -> None:
    url, n = fresh_database(postgres_url), 6
    barrier, errors = threading.Barrier(n), []

    def open_one() -> None:
        barrier.wait(timeout=30)
        try:
            PostgresJournal(url).close()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []


def test_unreachable_postgres_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(JournalError) as info:
        open_journal(f"postgresql://bob:s3cret@127.0.0.1:{port}/runs")
    message = str(info.value)
    assert f"127.0.0.1:{port}/runs" in message and "refused" in message.lower()
    assert "\n" not in message and "s3cret" not in message
    assert time.monotonic() - started < 10


def test_a_retention_policy_compacts_then_deletes_finished_runs(journal: SqlJournal) -> None:
    for run_id, status in (("done", "completed"), ("failed", "failed"), ("live", "running")):
        journal.create_run(run_id, "flows:f", "{}")
        journal.record(Entry(run_id, 1, "step", "s", "d", "done", output="1"))
        journal.set_status(run_id, status)
    future = "9999-01-01T00:00:00Z"
    assert journal.apply_retention(compact_before=future) == {
        "deleted": [], "compacted": ["done", "failed"]}
    assert journal.entries("done") == [] and journal.get_run("done").compacted
    assert len(journal.entries("live")) == 1  # a running run keeps its journal
    assert journal.apply_retention(compact_before=future) == {"deleted": [], "compacted": []}
    assert journal.apply_retention(delete_before="2000-01-01T00:00:00Z") == {
        "deleted": [], "compacted": []}  # nothing that old
    assert sorted(journal.apply_retention(delete_before=future)["deleted"]) == ["done", "failed"]
    assert [r.run_id for r in journal.list_runs()] == ["live"]
