"""The run journal: the durable record an agent run is recovered from.

A run is a row (`runs`); everything it did is an entry (`entries`) at a sequence number the
flow's code reaches in order: a step's output, a model call, a tool call's phases, a human wait.
On recovery the flow runs again from the top and each entry answers in place of the work it
records (DBOS's operation outputs, Temporal's event history). Entries change state only by
compare-and-set (`advance`), so two processes cannot both move a tool call from `attempt` on.

Every write is its own transaction, committed before the caller goes on: SQLite in WAL mode with
`synchronous=FULL` (`journal.SqliteJournal`) is the embedded default; `journal_pg.PostgresJournal`
speaks the same SQL to a shared PostgreSQL. `SqlJournal` holds the SQL; a backend supplies the
connection.

The journal owns its tables (durable/tables.py): they are written and read only through the
methods here, each named for what its caller needs: run evidence appends and reads its chain
(`evidence`, `evidence_head`), erasure finds and blanks a subject's runs (`subject_runs`,
`run_payloads`, `runs_with_output`, `blank_run`, `checkpoint_wal`). Stores that keep tables of
their own in the journal's database (subject keys, memory, LangGraph's checkpoints) use
`create_schema`, `execute`, `execute_all` and `query` on those tables only.

Payloads are JSON text. One over `inline_limit` bytes goes to the content-addressed artifact
store and the entry keeps `artifact:sha256:<hex>`. Each run's evidence records are a hash chain
in `evidence` (evidence/runs.py writes and checks them).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from aruntime.durable.states import FINISHED, EntryState, RunStatus
from aruntime.durable.tables import (
    ENTRY_COLUMNS,
    RUN_COLUMNS,
    SCHEMA,
    Entry,
    Run,
    entry_of,
    run_of,
)
from aruntime.timeutil import parse_rfc3339, sortable_rfc3339, utc_now

EvidenceRow = tuple[int, str, str]  # (n, the record's JSON, its hash)
_FINISHED_SQL = "status IN (?, ?, ?)"  # with FINISHED as its parameters
_KEEP_NULL = "CASE WHEN {0} IS NULL THEN NULL ELSE ? END"  # overwrite a payload, not a NULL


class JournalError(Exception):
    """The journal refused a write (a conflicting entry, an unknown run)."""


class EvidenceConflict(JournalError):
    """Another writer appended the evidence record this one meant to."""


def _now() -> str:
    return sortable_rfc3339(utc_now())


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SqlJournal(ABC):
    """The journal's SQL, written once for SQLite and PostgreSQL (`?` placeholders; a backend
    whose driver wants another style rewrites them in `_sql`). A backend supplies `_cursor`
    and may override `create_schema` (to queue concurrent creators) and `checkpoint_wal`."""

    @abstractmethod
    @contextmanager
    def _cursor(self, write: bool) -> Iterator[Any]:
        """A cursor inside one transaction, committed when the block ends without error."""

    def _sql(self, sql: str) -> str:
        return sql

    # -- for stores that keep their own tables in the journal's database (never the journal's)

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
                   evidence: EvidenceRow | None = None,
                   owner: tuple[str, str] | None = None) -> tuple[Run, bool]:
        """The run, created if new (with `evidence`, its first evidence record, and `owner`, its
        (tenant, principal JSON), in the same transaction), and whether this call created it.
        An existing run of the same id is returned as it is (starting a run is idempotent),
        unless it was for another flow or input."""
        now = _now()
        also = [] if owner is None else [
            ("INSERT INTO run_owners (run_id, tenant, principal) VALUES (?, ?, ?)",
             (run_id, *owner))]
        created = self._write_one(
            "INSERT INTO runs (run_id, flow, input, status, subject, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (run_id, flow, input_json, str(RunStatus.RUNNING), subject, now, now), run_id,
            evidence, also)
        if created:
            return Run(run_id, flow, input_json, RunStatus.RUNNING, subject=subject,
                       created_at=now, updated_at=now), True
        run = self.get_run(run_id)
        assert run is not None
        if run.flow != flow or run.input != input_json:
            raise JournalError(f"run {run_id} exists for {run.flow} with another input")
        return run, False

    def run_owner(self, run_id: str) -> tuple[str, str] | None:
        """(tenant, principal JSON) of the run, or None for a run started without one."""
        rows = self.query("SELECT tenant, principal FROM run_owners WHERE run_id = ?", (run_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    def _write_one(self, sql: str, params: tuple[Any, ...], run_id: str,
                   evidence: EvidenceRow | None,
                   also: Sequence[tuple[str, tuple[Any, ...]]] = ()) -> bool:
        """Write one row (`sql`, a guarded insert or update) and, if it was written, `evidence`
        and the statements `also` in the same transaction. Whether the row was written."""
        with self._cursor(write=True) as cur:
            cur.execute(self._sql(sql), params)
            wrote = bool(cur.rowcount == 1)
            if wrote:
                for more, more_params in also:
                    cur.execute(self._sql(more), more_params)
            if wrote and evidence is not None:
                self._evidence_in(cur, run_id, evidence)
        return wrote

    def _evidence_in(self, cur: Any, run_id: str, evidence: EvidenceRow) -> None:
        """Insert an evidence record inside the caller's transaction (which a conflict undoes)."""
        cur.execute(self._sql("INSERT INTO evidence (run_id, n, record, hash) VALUES (?, ?, ?, ?) "
                              "ON CONFLICT DO NOTHING"), (run_id, *evidence))
        if cur.rowcount != 1:
            raise EvidenceConflict(f"run {run_id}: evidence record {evidence[0]} is taken")

    def get_run(self, run_id: str) -> Run | None:
        rows = self.query(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        return run_of(rows[0]) if rows else None

    def list_runs(self, status: str | None = None, limit: int = 100,
                  tenant: str | None = None) -> list[Run]:
        """The newest runs first, those in `status` only if given (a `RunStatus`; other text,
        as a URL's query may hold, matches none), of `tenant` only if given (a run without an
        owner is the default tenant's)."""
        conds, params = [], []
        if status:
            conds.append("status = ?")
            params.append(status)
        if tenant is not None:
            conds.append("COALESCE((SELECT tenant FROM run_owners o WHERE o.run_id = runs.run_id),"
                         " 'default') = ?")
            params.append(tenant)
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        rows = self.query(f"SELECT {RUN_COLUMNS} FROM runs {where} "
                          "ORDER BY created_at DESC, run_id LIMIT ?", (*params, limit))
        return [run_of(r) for r in rows]

    def set_status(self, run_id: str, status: RunStatus, *, result: str | None = None,
                   error: str | None = None, unless: tuple[RunStatus, ...] = (),
                   evidence: EvidenceRow | None = None) -> bool:
        """Move a run to `status` (with `evidence`, recorded in the same transaction); refused
        (False) while it is in one of `unless` (a cancelled run is not revived by a late
        worker)."""
        try:
            status = RunStatus(status)
        except ValueError:
            raise ValueError(f"unknown run status {status!r}") from None
        sql, params = _status_update(run_id, status, result, error, unless)
        return self._write_one(sql, params, run_id, evidence)

    # -- entries

    def entry(self, run_id: str, seq: int) -> Entry | None:
        rows = self.query(f"SELECT {ENTRY_COLUMNS} FROM entries WHERE run_id = ? AND seq = ?",
                          (run_id, seq))
        return entry_of(rows[0]) if rows else None

    def entries(self, run_id: str) -> list[Entry]:
        rows = self.query(f"SELECT {ENTRY_COLUMNS} FROM entries WHERE run_id = ? ORDER BY seq",
                          (run_id,))
        return [entry_of(r) for r in rows]

    def record(self, e: Entry, evidence: EvidenceRow | None = None) -> Entry:
        """Write a new entry and, with `evidence` (n, record JSON, hash), its evidence record in
        the same transaction: one commit, one fsync. Returns `e` itself when it was written; if
        the seq was taken (another process got there first), the stored entry, which stands:
        the journal, not this process, is the truth. `EvidenceConflict` when the evidence slot
        was taken (nothing was written; refresh the chain's head and try again)."""
        e.updated_at = _now()
        if self._write_one(
                f"INSERT INTO entries ({ENTRY_COLUMNS}) VALUES ({_marks(11)}) "
                "ON CONFLICT DO NOTHING",
                (e.run_id, e.seq, str(e.kind), e.name, e.arg_digest, str(e.state), e.output,
                 e.error, e.idem_key, e.detail, e.updated_at), e.run_id, evidence):
            return e
        stored = self.entry(e.run_id, e.seq)
        assert stored is not None
        return stored

    def advance(self, run_id: str, seq: int, from_states: tuple[EntryState, ...],
                state: EntryState, *, output: str | None = None, error: str | None = None,
                detail: str | None = None, evidence: EvidenceRow | None = None) -> bool:
        """Compare-and-set an entry's state (with `evidence`, recorded in the same
        transaction): True if it was in `from_states` and moved."""
        sets, params = ["state = ?", "updated_at = ?"], [str(EntryState(state)), _now()]
        for column, value in (("output", output), ("error", error), ("detail", detail)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        return self._write_one(f"UPDATE entries SET {', '.join(sets)} WHERE run_id = ? "
                               f"AND seq = ? AND state IN ({_marks(len(from_states))})",
                               (*params, run_id, seq, *map(str, from_states)), run_id, evidence)

    # -- evidence: each run's hash chain (evidence/runs.py builds and checks the records)

    def append_evidence(self, run_id: str, n: int, record_json: str, record_hash: str) -> bool:
        """Append record `n` of the run's chain; False if `n` is taken (someone appended)."""
        return self._write_one("INSERT INTO evidence (run_id, n, record, hash) "
                               "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                               (run_id, n, record_json, record_hash), run_id, None)

    def evidence(self, run_id: str) -> list[EvidenceRow]:
        """The run's chain in order: (n, record JSON, hash) each."""
        return [(int(n), rec, h) for n, rec, h in self.query(
            "SELECT n, record, hash FROM evidence WHERE run_id = ? ORDER BY n", (run_id,))]

    def evidence_head(self, run_id: str) -> tuple[int, str] | None:
        """The last record of the run's chain, (n, hash); None before its first. Called when
        a writer does not know the head (first append from this process, or after a
        conflict)."""
        rows = self.query("SELECT n, hash FROM evidence WHERE run_id = ? ORDER BY n DESC "
                          "LIMIT 1", (run_id,))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    # -- erasure (governance/erasure.py): a subject's runs, found, then blanked run by run

    def subject_runs(self, *subjects: str) -> list[str]:
        """The ids of the runs whose subject is one of `subjects` (a subject, its digest)."""
        rows = self.query(f"SELECT run_id FROM runs WHERE subject IN ({_marks(len(subjects))}) "
                          "ORDER BY run_id", subjects)
        return [str(r[0]) for r in rows]

    def run_payloads(self, run_id: str) -> list[str]:
        """Every payload the run and its entries hold (input, result, outputs, errors,
        details), as stored: where erasure looks for the artifacts a run references."""
        rows = self.query("SELECT input, result, error FROM runs WHERE run_id = ?", (run_id,))
        rows += self.query("SELECT output, error, detail FROM entries WHERE run_id = ?",
                           (run_id,))
        return [text for row in rows for text in row if isinstance(text, str)]

    def runs_with_output(self, output: str) -> set[str]:
        """The runs with an entry whose stored output is exactly `output` (an artifact ref)."""
        rows = self.query("SELECT DISTINCT run_id FROM entries WHERE output = ?", (output,))
        return {str(r[0]) for r in rows}

    def blank_run(self, run_id: str, tombstone: str, subject: str) -> tuple[bool, int]:
        """Erase a run's payloads, in one transaction: cancel it unless it is finished,
        overwrite every payload of it and its entries with `tombstone` (a NULL stays NULL),
        and set its subject to `subject` (the subject's digest), so that it is no longer found
        by the subject's name. Ids, names, digests and evidence stay. (Whether it was
        cancelled, the entries blanked.)"""
        cancel, params = _status_update(run_id, RunStatus.CANCELLED, None, tombstone, FINISHED)
        with self._cursor(write=True) as cur:
            cur.execute(self._sql(cancel), params)
            cancelled = cur.rowcount == 1
            cur.execute(self._sql(
                f"UPDATE entries SET output = {_KEEP_NULL.format('output')}, "
                f"error = {_KEEP_NULL.format('error')}, detail = ? WHERE run_id = ?"),
                (tombstone, tombstone, tombstone, run_id))
            entries = int(cur.rowcount)
            cur.execute(self._sql(
                f"UPDATE runs SET input = ?, result = {_KEEP_NULL.format('result')}, "
                f"error = {_KEEP_NULL.format('error')}, subject = ? WHERE run_id = ?"),
                (tombstone, tombstone, tombstone, subject, run_id))
        return cancelled, entries

    def checkpoint_wal(self) -> str:
        """Called after erasure: drop what a write-ahead log keeps of rows since overwritten.
        "none" here (PostgreSQL: dead rows stay until VACUUM); SQLite truncates its WAL."""
        return "none"

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
                "AND updated_at < ? ORDER BY run_id", (*FINISHED, cutoff))]
            self._compact(out["compacted"])
        return out

    def prune(self, finished_before: str) -> list[str]:
        """Delete finished runs last updated before `finished_before` (RFC 3339), with
        everything they hold. Returns their ids."""
        cutoff = sortable_rfc3339(parse_rfc3339(finished_before))  # spelt as the stored times are
        ids = [r[0] for r in self.query(
            f"SELECT run_id FROM runs WHERE {_FINISHED_SQL} AND updated_at < ?",
            (*FINISHED, cutoff))]
        self.execute_all([(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                          for run_id in ids
                          for table in ("entries", "evidence", "run_owners", "runs")])
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


def _status_update(run_id: str, status: RunStatus, result: str | None, error: str | None,
                   unless: tuple[RunStatus, ...]) -> tuple[str, tuple[Any, ...]]:
    """The UPDATE that moves a run to `status` unless it is in one of `unless`."""
    guard = f" AND status NOT IN ({_marks(len(unless))})" if unless else ""
    return (f"UPDATE runs SET status = ?, result = ?, error = ?, updated_at = ? "
            f"WHERE run_id = ?{guard}",
            (str(status), result, error, _now(), run_id, *map(str, unless)))
