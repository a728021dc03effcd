"""The run journal: the durable record an agent run is recovered from.

A run is a row (`runs`); everything it did is an entry (`entries`) at a sequence number the
flow's code reaches in order: a step's output, a model call, a tool call's phases, a human wait.
On recovery the flow runs again from the top and each entry answers in place of the work it
records (DBOS's operation outputs, Temporal's event history). Entries change state only by
compare-and-set (`advance`), so two processes cannot both move a tool call from `attempt` on.

Every write is its own transaction, committed before the caller goes on: SQLite in WAL mode with
`synchronous=FULL` is the embedded default; `journal_pg.PostgresJournal` speaks the same SQL to a
shared PostgreSQL. `SqlJournal` holds the SQL; a backend supplies the connection.

Payloads are JSON text. One over `inline_limit` bytes goes to the content-addressed artifact
store and the entry keeps `artifact:sha256:<hex>`. Each run's evidence records are a hash chain
in `evidence` (evidence/runs.py writes and checks them).
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aruntime.timeutil import parse_rfc3339, sortable_rfc3339, utc_now

RUN_STATES = ("running", "waiting", "unknown", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
# the columns Run and Entry are read from, in their fields' order
_RUN_COLS = ("run_id, flow, input, status, result, error, subject, created_at, updated_at, "
             "compacted")
_ENTRY_COLS = ("run_id, seq, kind, name, arg_digest, state, output, error, idem_key, detail, "
               "updated_at")
_FINISHED_SQL = f"status IN ({', '.join(repr(s) for s in FINISHED)})"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY, flow TEXT NOT NULL, input TEXT NOT NULL,
        status TEXT NOT NULL, result TEXT, error TEXT, subject TEXT,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, """
    """compacted INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS runs_status ON runs (status, updated_at)",
    """CREATE TABLE IF NOT EXISTS entries (
        run_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
        arg_digest TEXT NOT NULL, state TEXT NOT NULL, output TEXT, error TEXT,
        idem_key TEXT, detail TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (run_id, seq))""",
    """CREATE TABLE IF NOT EXISTS evidence (
        run_id TEXT NOT NULL, n INTEGER NOT NULL, record TEXT NOT NULL, hash TEXT NOT NULL,
        PRIMARY KEY (run_id, n))""",
)


class JournalError(Exception):
    """The journal refused a write (a conflicting entry, an unknown run)."""


class EvidenceConflict(JournalError):
    """Another writer appended the evidence record this one meant to."""


@dataclass(slots=True)
class Run:
    run_id: str
    flow: str  # "module:function"
    input: str  # JSON text
    status: str
    result: str | None = None  # JSON text, once completed
    error: str | None = None
    subject: str | None = None  # whose data the run holds (governed memory, deletion)
    created_at: str = ""
    updated_at: str = ""
    compacted: bool = False


@dataclass(slots=True)
class Entry:
    run_id: str
    seq: int
    kind: str  # "step" | "model" | "tool" | "wait"
    name: str
    arg_digest: str
    state: str  # step/model: "done" | "error"; tool: intent, approved, attempt, done, unknown,
    #             error; wait: waiting, resolved, timed_out
    output: str | None = None  # JSON text, or "artifact:sha256:<hex>"
    error: str | None = None
    idem_key: str | None = None
    detail: str = "{}"  # JSON text: schemas, deadlines, approval digests
    updated_at: str = ""


def _run_of(r: tuple[Any, ...]) -> Run:
    return Run(run_id=r[0], flow=r[1], input=r[2], status=r[3], result=r[4], error=r[5],
               subject=r[6], created_at=r[7], updated_at=r[8], compacted=bool(r[9]))


def _now() -> str:
    return sortable_rfc3339(utc_now())


class SqlJournal(ABC):
    """The journal's SQL, written once for SQLite and PostgreSQL (`?` placeholders; a backend
    whose driver wants another style rewrites them in `_sql`)."""

    @abstractmethod
    @contextmanager
    def _cursor(self, write: bool) -> Iterator[Any]:
        """A cursor inside one transaction, committed when the block ends without error."""

    def _sql(self, sql: str) -> str:
        return sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own transaction; the rows it changed."""
        with self._cursor(write=True) as cur:
            cur.execute(self._sql(sql), tuple(params))
            return int(cur.rowcount)

    def execute_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Several statements in one transaction (all or none); the rows each changed."""
        counts = []
        with self._cursor(write=True) as cur:
            for sql, params in statements:
                cur.execute(self._sql(sql), tuple(params))
                counts.append(int(cur.rowcount))
        return counts

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read."""
        with self._cursor(write=False) as cur:
            cur.execute(self._sql(sql), tuple(params))
            return [tuple(r) for r in cur.fetchall()]

    def create_schema(self, statements: Sequence[str] = SCHEMA) -> None:
        """Create tables (`CREATE … IF NOT EXISTS`): the journal's, or those of a store that
        keeps its rows in the journal's database (subject keys, memory, LangGraph's)."""
        for statement in statements:
            self.execute(statement)

    # -- runs

    def create_run(self, run_id: str, flow: str, input_json: str, subject: str | None = None,
                   evidence: tuple[int, str, str] | None = None) -> tuple[Run, bool]:
        """The run, created if new (with `evidence`, its first evidence record in the same
        transaction), and whether this call created it. An existing run of the same id is
        returned as it is (starting a run is idempotent), unless it was for another flow or
        input."""
        now = _now()
        created = self._write_one(
            "INSERT INTO runs (run_id, flow, input, status, subject, created_at, updated_at) "
            "VALUES (?, ?, ?, 'running', ?, ?, ?) ON CONFLICT DO NOTHING",
            (run_id, flow, input_json, subject, now, now), run_id, evidence)
        if created:
            return Run(run_id, flow, input_json, "running", subject=subject, created_at=now,
                       updated_at=now), True
        run = self.get_run(run_id)
        assert run is not None
        if run.flow != flow or run.input != input_json:
            raise JournalError(f"run {run_id} exists for {run.flow} with another input")
        return run, False

    def _write_one(self, sql: str, params: tuple[Any, ...], run_id: str,
                   evidence: tuple[int, str, str] | None) -> bool:
        """Write one row (`sql`, a guarded insert or update) and, if it was written, `evidence`
        in the same transaction. Whether the row was written."""
        with self._cursor(write=True) as cur:
            cur.execute(self._sql(sql), params)
            wrote = bool(cur.rowcount == 1)
            if wrote and evidence is not None:
                self._evidence_in(cur, run_id, evidence)
        return wrote

    def _evidence_in(self, cur: Any, run_id: str, evidence: tuple[int, str, str]) -> None:
        """Insert an evidence record inside the caller's transaction (which a conflict undoes)."""
        cur.execute(self._sql("INSERT INTO evidence (run_id, n, record, hash) VALUES (?, ?, ?, ?) "
                              "ON CONFLICT DO NOTHING"), (run_id, *evidence))
        if cur.rowcount != 1:
            raise EvidenceConflict(f"run {run_id}: evidence record {evidence[0]} is taken")

    def get_run(self, run_id: str) -> Run | None:
        rows = self.query(f"SELECT {_RUN_COLS} FROM runs WHERE run_id = ?", (run_id,))
        return _run_of(rows[0]) if rows else None

    def list_runs(self, status: str | None = None, limit: int = 100) -> list[Run]:
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self.query(f"SELECT {_RUN_COLS} FROM runs {where} "
                          "ORDER BY created_at DESC, run_id LIMIT ?", (*params, limit))
        return [_run_of(r) for r in rows]

    def set_status(self, run_id: str, status: str, *, result: str | None = None,
                   error: str | None = None, unless: tuple[str, ...] = (),
                   evidence: tuple[int, str, str] | None = None) -> bool:
        """Move a run to `status` (with `evidence`, recorded in the same transaction); refused
        (False) while it is in one of `unless` (a cancelled run is not revived by a late
        worker)."""
        if status not in RUN_STATES:
            raise ValueError(f"unknown run status {status!r}")
        guard = f" AND status NOT IN ({', '.join('?' * len(unless))})" if unless else ""
        return self._write_one(f"UPDATE runs SET status = ?, result = ?, error = ?, "
                               f"updated_at = ? WHERE run_id = ?{guard}",
                               (status, result, error, _now(), run_id, *unless), run_id, evidence)

    # -- entries

    def entry(self, run_id: str, seq: int) -> Entry | None:
        rows = self.query(f"SELECT {_ENTRY_COLS} FROM entries WHERE run_id = ? AND seq = ?",
                          (run_id, seq))
        return Entry(*rows[0]) if rows else None

    def entries(self, run_id: str) -> list[Entry]:
        rows = self.query(f"SELECT {_ENTRY_COLS} FROM entries WHERE run_id = ? ORDER BY seq",
                          (run_id,))
        return [Entry(*r) for r in rows]

    def record(self, e: Entry, evidence: tuple[int, str, str] | None = None) -> Entry:
        """Write a new entry and, with `evidence` (n, record JSON, hash), its evidence record in
        the same transaction: one commit, one fsync. Returns `e` itself when it was written; if
        the seq was taken (another process got there first), the stored entry, which stands:
        the journal, not this process, is the truth. `EvidenceConflict` when the evidence slot
        was taken (nothing was written; refresh the chain's head and try again)."""
        e.updated_at = _now()
        if self._write_one(
                f"INSERT INTO entries ({_ENTRY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (e.run_id, e.seq, e.kind, e.name, e.arg_digest, e.state, e.output, e.error,
                 e.idem_key, e.detail, e.updated_at), e.run_id, evidence):
            return e
        stored = self.entry(e.run_id, e.seq)
        assert stored is not None
        return stored

    def advance(self, run_id: str, seq: int, from_states: tuple[str, ...], state: str, *,
                output: str | None = None, error: str | None = None,
                detail: str | None = None,
                evidence: tuple[int, str, str] | None = None) -> bool:
        """Compare-and-set an entry's state (with `evidence`, recorded in the same
        transaction): True if it was in `from_states` and moved."""
        sets, params = ["state = ?", "updated_at = ?"], [state, _now()]
        for column, value in (("output", output), ("error", error), ("detail", detail)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        marks = ", ".join("?" * len(from_states))
        return self._write_one(f"UPDATE entries SET {', '.join(sets)} WHERE run_id = ? "
                               f"AND seq = ? AND state IN ({marks})",
                               (*params, run_id, seq, *from_states), run_id, evidence)

    # -- evidence

    def append_evidence(self, run_id: str, n: int, record_json: str, record_hash: str) -> bool:
        """Append record `n` of the run's chain; False if `n` is taken (someone appended)."""
        return self.execute("INSERT INTO evidence (run_id, n, record, hash) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT DO NOTHING", (run_id, n, record_json, record_hash)) == 1

    def evidence(self, run_id: str) -> list[tuple[int, str, str]]:
        return [(int(n), rec, h) for n, rec, h in self.query(
            "SELECT n, record, hash FROM evidence WHERE run_id = ? ORDER BY n", (run_id,))]

    # -- retention

    def compact(self, run_id: str) -> int:
        """Drop a finished run's entries (its result and evidence stay): nothing will replay it.
        Returns the entries dropped."""
        run = self.get_run(run_id)
        if run is None or run.status not in FINISHED:
            raise JournalError(f"run {run_id} is not finished; only finished runs are compacted")
        return self._compact([run_id])

    def _compact(self, run_ids: list[str]) -> int:
        """Drop finished runs' entries and mark them compacted, in one transaction; the entries
        dropped."""
        counts = self.execute_all(
            [("DELETE FROM entries WHERE run_id = ?", (r,)) for r in run_ids]
            + [("UPDATE runs SET compacted = 1 WHERE run_id = ?", (r,)) for r in run_ids])
        return sum(counts[:len(run_ids)])

    def apply_retention(self, compact_before: str | None = None,
                        delete_before: str | None = None) -> dict[str, list[str]]:
        """A retention policy in one call: finished runs last updated before `compact_before`
        lose their entries, those before `delete_before` everything. Returns the run ids."""
        out: dict[str, list[str]] = {"deleted": [], "compacted": []}
        if delete_before is not None:
            out["deleted"] = self.prune(delete_before)
        if compact_before is not None:
            cutoff = sortable_rfc3339(parse_rfc3339(compact_before))
            out["compacted"] = [r[0] for r in self.query(
                f"SELECT run_id FROM runs WHERE {_FINISHED_SQL} AND compacted = 0 "
                "AND updated_at < ? ORDER BY run_id", (cutoff,))]
            self._compact(out["compacted"])
        return out

    def prune(self, finished_before: str) -> list[str]:
        """Delete finished runs last updated before `finished_before` (RFC 3339), with
        everything they hold. Returns their ids."""
        cutoff = sortable_rfc3339(parse_rfc3339(finished_before))  # spelt as the stored times are
        ids = [r[0] for r in self.query(
            f"SELECT run_id FROM runs WHERE {_FINISHED_SQL} AND updated_at < ?", (cutoff,))]
        self.execute_all([(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                          for run_id in ids for table in ("entries", "evidence", "runs")])
        return ids

    # -- connections: one per thread, opened on first use

    def _init_connections(self) -> None:
        self._local = threading.local()
        self._all_conns: list[Any] = []
        self._lock = threading.Lock()

    def _thread_conn(self, open_conn: Callable[[], Any],
                     usable: Callable[[Any], bool] = lambda conn: True) -> Any:
        """This thread's connection, opened with `open_conn` when it has none usable."""
        conn = getattr(self._local, "conn", None)
        if conn is None or not usable(conn):
            conn = open_conn()
            self._local.conn = conn
            with self._lock:
                self._all_conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for conn in self._all_conns:
                conn.close()
            self._all_conns.clear()
        self._local = threading.local()


class SqliteJournal(SqlJournal):
    """SQLite in WAL mode, `synchronous=FULL`: a commit is on disk when it returns. One
    connection per thread; SQLite serialises writers across processes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_connections()
        self.create_schema()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")  # erased rows are zeroed, not left in free pages
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = self._thread_conn(self._open)
        return conn

    @contextmanager
    def _cursor(self, write: bool) -> Iterator[Any]:
        conn = self._conn()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")  # a writer takes the lock up front
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            # A failed COMMIT must not leave the thread's connection inside a transaction (its
            # next BEGIN would fail); some errors have already rolled back, and a ROLLBACK then
            # would hide the real error.
            if conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()

def open_journal(url: str | Path) -> SqlJournal:
    """`postgresql://…` for a shared PostgreSQL; anything else is a SQLite file path."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        from aruntime.durable.journal_pg import PostgresJournal

        return PostgresJournal(text)
    return SqliteJournal(Path(text.removeprefix("sqlite:///")))

