"""Governed memory: what agents remember, scoped, sealed, aged out and erasable.

An item lives in one scope, (tenant, user, agent) and optionally a run, and every read names its
scope exactly: there is no query across tenants, users or agents, and a run's items are apart
from the agent's run-less ones. Each item has a retention class with a maximum age since its last
write (`expire` deletes what is past it; legal hold never expires), PII tags saying what kind of
personal data it holds, and a subject: whose data it is (the user unless told otherwise).

Values are sealed with the subject's key (`SubjectKeys`), bound to their scope and key, so
shredding the key erases them everywhere and a row moved to another scope does not open. Scopes,
keys and tags stay in clear (they are how items are found): personal data belongs in values.
Subject ids are global, not per tenant: make them unique across tenants (an account id).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from aruntime.contracts.base import canonical_json
from aruntime.durable.journal import SqlJournal
from aruntime.governance.subject_keys import ShreddedError, SubjectKeys
from aruntime.timeutil import sortable_rfc3339, utc_now

RETENTION: Mapping[str, timedelta | None] = MappingProxyType({
    "session": timedelta(days=1),
    "short": timedelta(days=30),
    "long": timedelta(days=365),
    "legal-hold": None,  # kept until the hold is released; erasure refuses it unless told
})
LEGAL_HOLD = "legal-hold"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS memory (
        tenant TEXT NOT NULL, user_id TEXT NOT NULL, agent TEXT NOT NULL, run_id TEXT NOT NULL,
        item_key TEXT NOT NULL, value TEXT NOT NULL, retention TEXT NOT NULL, pii TEXT NOT NULL,
        subject TEXT NOT NULL, written_at TEXT NOT NULL,
        PRIMARY KEY (tenant, user_id, agent, run_id, item_key))""",
    "CREATE INDEX IF NOT EXISTS memory_subject ON memory (subject)",
    "CREATE INDEX IF NOT EXISTS memory_retention ON memory (retention, written_at)",
)
_COLUMNS = "tenant, user_id, agent, run_id, item_key, value, retention, pii, subject, written_at"
_IN_SCOPE = "tenant = ? AND user_id = ? AND agent = ? AND run_id = ?"


@dataclass(frozen=True, slots=True)
class Scope:
    tenant: str
    user: str
    agent: str
    run: str | None = None  # None: the agent's memory across runs

    def __post_init__(self) -> None:  # ValueError, not assert: scoping is access control
        for name in ("tenant", "user", "agent"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"scope {name} must be a non-empty string")
        if self.run is not None and (not isinstance(self.run, str) or not self.run):
            raise ValueError("scope run must be None or a non-empty string")

    def params(self) -> tuple[str, str, str, str]:
        # "" stands for no run: NULLs never collide in a primary key, so they cannot be one.
        return self.tenant, self.user, self.agent, self.run or ""


@dataclass(frozen=True, slots=True)
class MemoryItem:
    scope: Scope
    key: str
    value: Any  # JSON value
    retention: str
    pii: tuple[str, ...]
    subject_digest: str  # SubjectKeys.digest of the subject
    written_at: str


def _context(scope: Scope, key: str) -> bytes:
    return canonical_json(["aruntime.memory/v1", *scope.params(), key])


class MemoryStore:
    """Items in table `memory` of `journal`'s database, sealed with `keys`."""

    def __init__(self, journal: SqlJournal, keys: SubjectKeys,
                 retention: Mapping[str, timedelta | None] = RETENTION) -> None:
        self.journal, self.keys, self.retention = journal, keys, dict(retention)
        journal.create_schema(SCHEMA)

    def put(self, scope: Scope, key: str, value: Any, *, retention: str = "long",
            pii: Iterable[str] = (), subject: str | None = None) -> MemoryItem:
        """Write (or overwrite) the item `key` in `scope`; its age starts again."""
        if not isinstance(key, str) or not key:
            raise ValueError("memory key must be a non-empty string")
        if retention not in self.retention:
            raise ValueError(f"unknown retention class {retention!r}; one of "
                             f"{', '.join(self.retention)}")
        tags = tuple(sorted(set(pii)))
        if not all(isinstance(t, str) and t for t in tags):
            raise ValueError("PII tags must be non-empty strings")
        subject = scope.user if subject is None else subject
        sealed = self.keys.seal(subject, canonical_json(value), _context(scope, key))
        sid, now = self.keys.digest(subject), sortable_rfc3339(utc_now())
        self.journal.execute(
            f"INSERT INTO memory ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, user_id, agent, run_id, item_key) DO UPDATE SET "
            "value = excluded.value, retention = excluded.retention, pii = excluded.pii, "
            "subject = excluded.subject, written_at = excluded.written_at",
            (*scope.params(), key, sealed, retention, json.dumps(list(tags)), sid, now))
        return MemoryItem(scope, key, value, retention, tags, sid, now)

    def get(self, scope: Scope, key: str) -> MemoryItem | None:
        """The item, or None; ShreddedError if its subject was erased."""
        rows = self.journal.query(f"SELECT {_COLUMNS} FROM memory WHERE {_IN_SCOPE} "
                                  "AND item_key = ?", (*scope.params(), key))
        return self._item(scope, rows[0]) if rows else None

    def list(self, scope: Scope) -> builtins.list[MemoryItem]:
        """The scope's items by key; items of an erased subject are left out."""
        rows = self.journal.query(f"SELECT {_COLUMNS} FROM memory WHERE {_IN_SCOPE} "
                                  "ORDER BY item_key", scope.params())
        items = []
        for row in rows:
            try:
                items.append(self._item(scope, row))
            except ShreddedError:
                continue
        return items

    def search(self, scope: Scope, text: str) -> builtins.list[MemoryItem]:
        """The scope's items whose key or JSON value contains `text`, ignoring case. Values are
        sealed, so this opens each one: fine for a user's memory, not for a corpus."""
        needle = text.casefold()
        return [item for item in self.list(scope)
                if needle in item.key.casefold()
                or needle in canonical_json(item.value).decode("utf-8").casefold()]

    def delete(self, scope: Scope, key: str) -> bool:
        return self.journal.execute(f"DELETE FROM memory WHERE {_IN_SCOPE} AND item_key = ?",
                                    (*scope.params(), key)) == 1

    def expire(self, now: datetime | None = None) -> int:
        """Delete items older than their class allows at `now`; how many went."""
        now = now or utc_now()
        return sum(self.journal.execute(
            "DELETE FROM memory WHERE retention = ? AND written_at < ?",
            (name, sortable_rfc3339(now - age)))
            for name, age in self.retention.items() if age is not None)

    # -- erasure: a subject's items, and every item in the scopes of the user of that id

    def held(self, subject: str) -> int:
        """The subject's items under legal hold."""
        rows = self.journal.query("SELECT COUNT(*) FROM memory WHERE retention = ? AND "
                                  "(subject = ? OR user_id = ?)",
                                  (LEGAL_HOLD, self.keys.digest(subject), subject))
        return int(rows[0][0])

    def erase(self, subject: str) -> int:
        """Delete the subject's items and its user scopes' items; how many went."""
        return self.journal.execute("DELETE FROM memory WHERE subject = ? OR user_id = ?",
                                    (self.keys.digest(subject), subject))

    def _item(self, scope: Scope, row: tuple[Any, ...]) -> MemoryItem:
        key, sealed, retention, pii, sid, written_at = row[4:]
        value = json.loads(self.keys.open(sealed, _context(scope, key)))
        return MemoryItem(scope, key, value, retention, tuple(json.loads(pii)), sid, written_at)
