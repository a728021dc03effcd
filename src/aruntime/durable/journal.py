"""The journal's entry point: `open_journal` by URL, and the embedded backend, SQLite.

`SqlJournal` (durable/sql_journal.py) is the interface and holds the SQL; `SqliteJournal` here
and `journal_pg.PostgresJournal` supply its connections. The names a caller needs (the rows, the
errors) are importable from here; the states are in durable/states.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from aruntime.durable.sql_journal import EvidenceConflict, EvidenceRow, JournalError, SqlJournal
from aruntime.durable.tables import Entry, Run

__all__ = ["JOURNAL_ENV", "Entry", "EvidenceConflict", "EvidenceRow", "JournalError", "Run",
           "SqlJournal", "SqliteJournal", "default_journal", "open_journal"]

JOURNAL_ENV = "ARUNTIME_JOURNAL"


def default_journal(data_dir: Path | None = None) -> str:
    """$ARUNTIME_JOURNAL, else runs.db in the data directory: where `aruntime run`, `aruntime
    serve` and the release commands all find the same journal."""
    import os

    from aruntime import paths

    return os.environ.get(JOURNAL_ENV) or str((data_dir or paths.data_dir()) / "runs.db")


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

    def checkpoint_wal(self) -> str:
        """Copy the WAL into the database and truncate it, so old frames of erased rows go:
        "truncated", or "busy" while a reader still needs them."""
        with closing(sqlite3.connect(self.path, timeout=30.0)) as conn:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return "truncated" if busy == 0 else "busy"


def open_journal(url: str | Path) -> SqlJournal:
    """`postgresql://…` for a shared PostgreSQL; anything else is a SQLite file path."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        from aruntime.durable.journal_pg import PostgresJournal

        return PostgresJournal(text)
    return SqliteJournal(Path(text.removeprefix("sqlite:///")))
