"""A rollout's state and where it is kept. The state is one row (its JSON and a revision that
every write bumps, so two writers — a server's controller and a command line — never overwrite
each other unseen) and each change is an event, signed and hash-chained, in the same
transaction: killed at any point, a controller reads back exactly the step it was at.

The rollout's digest covers what it would do (the name, both versions, the steps, the
analysis, shadow, approval): an approval names it, and an approval of another is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from aruntime.contracts.base import canonical_json, sha256_digest
from aruntime.durable.sql_journal import SqlJournal
from aruntime.evidence.signing import DeploymentKey
from aruntime.timeutil import sortable_rfc3339, utc_now

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rollouts (
        rollout_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
        state TEXT NOT NULL, revision INTEGER NOT NULL, updated_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS rollouts_name ON rollouts (name, status)",
    """CREATE TABLE IF NOT EXISTS rollout_events (
        rollout_id TEXT NOT NULL, n INTEGER NOT NULL, event TEXT NOT NULL, hash TEXT NOT NULL,
        signature TEXT NOT NULL, PRIMARY KEY (rollout_id, n))""",
)
MAX_MEASUREMENTS = 200


class Status(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"  # an inconclusive analysis: a person promotes or aborts
    AWAITING_APPROVAL = "awaiting-approval"
    PROMOTED = "promoted"
    ABORTED = "aborted"


ACTIVE = (Status.PROGRESSING, Status.PAUSED, Status.AWAITING_APPROVAL)


class StaleRollout(RuntimeError):
    """Another writer changed the rollout since it was read."""


@dataclass
class Rollout:
    rollout_id: str
    name: str
    kind: str
    stable: str
    candidate: str
    steps: list[int]
    pause_s: float
    analysis: dict[str, Any]
    shadow: bool
    require_approval: bool
    created_by: str
    created_at: str
    status: Status = Status.PROGRESSING
    step: int = 0
    step_started_at: str = ""
    reasons: list[str] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    offline_step: int = -1  # the last step whose offline metrics were measured
    revision: int = 0

    @property
    def digest(self) -> str:
        return sha256_digest({"rollout": self.rollout_id, "name": self.name,
                              "stable": self.stable, "candidate": self.candidate,
                              "steps": self.steps, "pause_s": self.pause_s,
                              "analysis": self.analysis, "shadow": self.shadow,
                              "require_approval": self.require_approval})

    @property
    def weight(self) -> int:
        """The candidate's percent of the traffic (of the mirrored traffic, in shadow)."""
        if self.status is Status.ABORTED:
            return 0
        return 100 if self.status is Status.PROMOTED else self.steps[self.step]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value, "digest": self.digest,
                "weight": self.weight}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rollout:
        data = {k: v for k, v in data.items() if k not in ("digest", "weight")}
        return cls(**{**data, "status": Status(data["status"])})


class RolloutStore:
    def __init__(self, journal: SqlJournal, signer: DeploymentKey) -> None:
        self.journal, self.signer = journal, signer
        journal.create_schema(SCHEMA)

    def create(self, rollout: Rollout, event: dict[str, Any]) -> None:
        self.journal.execute_all([
            ("INSERT INTO rollouts (rollout_id, name, status, state, revision, updated_at) "
             "VALUES (?, ?, ?, ?, 0, ?)", (rollout.rollout_id, rollout.name,
                                          rollout.status.value, _state(rollout), _now())),
            self._event(rollout, 0, event, "")])

    def save(self, rollout: Rollout, event: dict[str, Any]) -> None:
        """Write the new state and its event, or StaleRollout if another writer came first."""
        rows = self.journal.query("SELECT hash FROM rollout_events WHERE rollout_id = ? AND "
                                  "n = ?", (rollout.rollout_id, rollout.revision))
        prev = rows[0][0] if rows else ""
        seen = rollout.revision
        rollout.revision += 1
        counts = self.journal.execute_all([
            ("UPDATE rollouts SET status = ?, state = ?, revision = ?, updated_at = ? WHERE "
             "rollout_id = ? AND revision = ?", (rollout.status.value, _state(rollout),
                                                 rollout.revision, _now(), rollout.rollout_id,
                                                 seen)),
            self._event(rollout, rollout.revision, event, prev)])
        if counts[0] != 1:
            raise StaleRollout(rollout.rollout_id)

    def _event(self, rollout: Rollout, n: int, event: dict[str, Any],
               prev: str) -> tuple[str, tuple[Any, ...]]:
        body = canonical_json({**event, "n": n, "at": _now(), "rollout": rollout.rollout_id,
                               "digest": rollout.digest, "prev": prev})
        return ("INSERT INTO rollout_events (rollout_id, n, event, hash, signature) VALUES "
                "(?, ?, ?, ?, ?)", (rollout.rollout_id, n, body.decode(),
                                    "sha256:" + hashlib.sha256(body).hexdigest(),
                                    self.signer.sign(body)))

    def get(self, rollout_id: str) -> Rollout | None:
        rows = self.journal.query("SELECT state, revision FROM rollouts WHERE rollout_id = ?",
                                  (rollout_id,))
        return _rollout(rows[0]) if rows else None

    def all(self, active_only: bool = False) -> list[Rollout]:
        where = " WHERE status IN (?, ?, ?)" if active_only else ""
        rows = self.journal.query(f"SELECT state, revision FROM rollouts{where} ORDER BY "
                                  "updated_at", tuple(s.value for s in ACTIVE)
                                  if active_only else ())
        return [_rollout(r) for r in rows]

    def events(self, rollout_id: str) -> list[dict[str, Any]]:
        rows = self.journal.query("SELECT event FROM rollout_events WHERE rollout_id = ? "
                                  "ORDER BY n", (rollout_id,))
        return [json.loads(r[0]) for r in rows]


def _state(rollout: Rollout) -> str:
    rollout.measurements = rollout.measurements[-MAX_MEASUREMENTS:]
    return json.dumps({k: v for k, v in rollout.to_json().items() if k != "revision"})


def _rollout(row: tuple[Any, ...]) -> Rollout:
    state, revision = row
    return Rollout.from_json({**json.loads(state), "revision": int(revision)})


def _now() -> str:
    return sortable_rfc3339(utc_now())
