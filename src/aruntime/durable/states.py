"""The states a run and its entries move through, and the kinds of entry.

StrEnums, so that what the journal stores (and the evidence and the JSON views show) is each
member's value: the very text these states were written as when they were plain strings, so an
existing journal reads unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"  # for a person: an answer, or an approval of a tool call
    UNKNOWN = "unknown"  # a tool call's outcome is unknown until a person resolves it
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# nothing moves a run out of these again (a late worker must not revive a cancelled run)
FINISHED: tuple[RunStatus, ...] = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class EntryKind(StrEnum):
    STEP = "step"
    MODEL = "model"
    TOOL = "tool"
    WAIT = "wait"


class EntryState(StrEnum):
    """step, model: done | error. tool: intent -> (approved | rejected) -> attempt -> done |
    error | unknown, and unknown -> done | error when a person resolves it. wait: waiting ->
    resolved | timed_out."""

    INTENT = "intent"
    APPROVED = "approved"
    REJECTED = "rejected"
    ATTEMPT = "attempt"
    DONE = "done"
    ERROR = "error"
    UNKNOWN = "unknown"
    WAITING = "waiting"
    RESOLVED = "resolved"
    TIMED_OUT = "timed_out"
