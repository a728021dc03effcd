"""The journal's tables (`runs`, `entries`, `evidence`) and the rows it reads from them.

Only the journal (durable/journal.py) reads and writes these tables; everything else goes
through its named methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aruntime.durable.states import EntryKind, EntryState, RunStatus

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
    # who a run acts for: its tenant and principal (JSON: id, roles, via); a run without a row
    # (started before identities existed) belongs to the default tenant
    """CREATE TABLE IF NOT EXISTS run_owners (
        run_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, principal TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS run_owners_tenant ON run_owners (tenant)",
    """CREATE TABLE IF NOT EXISTS evidence (
        run_id TEXT NOT NULL, n INTEGER NOT NULL, record TEXT NOT NULL, hash TEXT NOT NULL,
        PRIMARY KEY (run_id, n))""",
)

# the columns Run and Entry are read from, in their fields' order
RUN_COLUMNS = ("run_id, flow, input, status, result, error, subject, created_at, updated_at, "
               "compacted")
ENTRY_COLUMNS = ("run_id, seq, kind, name, arg_digest, state, output, error, idem_key, detail, "
                 "updated_at")


@dataclass(slots=True)
class Run:
    run_id: str
    flow: str  # "module:function"
    input: str  # JSON text
    status: RunStatus
    result: str | None = None  # JSON text, once completed
    error: str | None = None
    subject: str | None = None  # whose data the run holds (governed memory, deletion)
    created_at: str = ""
    updated_at: str = ""
    compacted: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.status, RunStatus):  # a row's text becomes its member
            self.status = RunStatus(self.status)


@dataclass(slots=True)
class Entry:
    run_id: str
    seq: int
    kind: EntryKind
    name: str
    arg_digest: str
    state: EntryState  # which states a kind moves through: see EntryState
    output: str | None = None  # JSON text, or "artifact:sha256:<hex>"
    error: str | None = None
    idem_key: str | None = None
    detail: str = "{}"  # JSON text: schemas, deadlines, approval digests
    updated_at: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EntryKind):  # a row's text becomes its member
            self.kind = EntryKind(self.kind)
        if not isinstance(self.state, EntryState):
            self.state = EntryState(self.state)


def run_of(row: tuple[Any, ...]) -> Run:
    return Run(run_id=row[0], flow=row[1], input=row[2], status=row[3], result=row[4],
               error=row[5], subject=row[6], created_at=row[7], updated_at=row[8],
               compacted=bool(row[9]))


def entry_of(row: tuple[Any, ...]) -> Entry:
    return Entry(*row)
