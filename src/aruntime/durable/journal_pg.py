"""The run journal on a shared PostgreSQL (`open_journal("postgresql://…")`).

Same SQL as SQLite (`SqlJournal`); psycopg 3 wants `%s` placeholders, and each statement runs in
its own transaction on the calling thread's connection. Compare-and-set holds without extra
locking: under READ COMMITTED a second `UPDATE … WHERE state IN (…)` waits for the first writer's
row lock and then re-checks its WHERE on the new row, so it changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from aruntime.durable.sql_journal import JournalError, SqlJournal
from aruntime.durable.tables import SCHEMA
from aruntime.errors import first_line

# Key of the advisory lock that queues schema creation (the journal's and its neighbours'): two
# processes opening a fresh database at once would otherwise race CREATE TABLE IF NOT EXISTS
# into a unique violation in pg_type.
_SCHEMA_LOCK = 0x6A6F75726E616C  # "journal"

Connection = psycopg.Connection[tuple[Any, ...]]


class PostgresJournal(SqlJournal):
    """One connection per thread, opened on first use; `close()` closes them all."""

    def __init__(self, url: str, connect_timeout: int = 10) -> None:
        self.url = url
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise JournalError(f"not a PostgreSQL URL: {first_line(exc)}") from None
        params.setdefault("connect_timeout", connect_timeout)  # the URL's own value wins
        self._where = (f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/"
                       f"{params.get('dbname', '')}")  # for errors: never the password
        self._conninfo = make_conninfo("", **params)
        self._init_connections()
        self.create_schema()

    def _sql(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def _open(self) -> Connection:
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise JournalError(f"cannot reach the PostgreSQL journal at {self._where}: "
                               f"{first_line(exc)}") from None

    def _conn(self) -> Connection:
        # a broken connection reads as closed: open another
        conn: Connection = self._thread_conn(self._open, lambda c: not c.closed)
        return conn

    @contextmanager
    def _cursor(self, write: bool) -> Iterator[Any]:
        conn = self._conn()
        # autocommit connection: transaction() is BEGIN … COMMIT, or ROLLBACK on an exception
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def create_schema(self, statements: Sequence[str] = SCHEMA) -> None:
        with self._cursor(write=True) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in statements:
                cur.execute(statement)

