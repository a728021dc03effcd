"""What happens to a claim over time: registered (active), reviewed, due for review, superseded
by a rerun, yanked. Each change is a new history entry and the status it leaves; nothing is
ever deleted, so a yanked claim keeps its figure and its reason."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aruntime.contracts import ClaimRecord, ClaimStatus, Source
from aruntime.timeutil import parse_rfc3339, rfc3339

REVIEW_PERIOD = timedelta(days=90)
# A rerun that moves the figure by more than this puts the earlier claim under review: the
# machines here vary by up to ~12% between runs, so a single rerun decides nothing by itself.
RERUN_TOLERANCE = 0.05


class LifecycleError(ValueError):
    """A change the claim's state does not allow (reviewing a yanked claim, yanking twice)."""


def with_entry(record: ClaimRecord, at: datetime, status: ClaimStatus, note: str,
               **updates: Any) -> ClaimRecord:
    """The record with `updates` applied and a history entry appended; validated again."""
    data = record.to_json() | updates
    data["status"] = status.value
    data["history"] = [*data.get("history", []),
                       {"at": rfc3339(at), "status": status.value, "note": note}]
    return ClaimRecord.model_validate(data)


def register(measurement: ClaimRecord, *, claim_id: str, now: datetime, sources: list[Source],
             dependencies: dict[str, str], note: str) -> ClaimRecord:
    """A benchmark's measurement made a registered claim, due for review 90 days after it was
    measured (a figure ages from its measurement, not from its registration)."""
    if measurement.id is not None:
        raise LifecycleError(f"already registered as {measurement.id!r}")
    if measurement.measured_at is None:
        raise LifecycleError("not a benchmark's claim record: it has no measurement")
    review_by = parse_rfc3339(measurement.measured_at) + REVIEW_PERIOD
    return with_entry(measurement, now, ClaimStatus.ACTIVE, note, id=claim_id,
                      sources=[s.model_dump(mode="json", exclude_none=True) for s in sources],
                      dependencies=dependencies, review_by=rfc3339(review_by))


def review(record: ClaimRecord, now: datetime, *, dependencies: dict[str, str] | None,
           period: timedelta = REVIEW_PERIOD, note: str = "") -> ClaimRecord:
    """Someone checked the claim still holds now: active again, due `period` from now. For a
    performance claim the dependency versions it now holds under are today's."""
    if record.status is ClaimStatus.YANKED:
        raise LifecycleError(f"{record.id} is yanked; a yanked claim stays yanked "
                             "(register a new measurement instead)")
    updates: dict[str, Any] = {"review_by": rfc3339(now + period)}
    if dependencies is not None and record.dependencies is not None:
        updates["dependencies"] = dependencies
    text = f"reviewed; next review by {updates['review_by']}" + (f": {note}" if note else "")
    return with_entry(record, now, ClaimStatus.ACTIVE, text, **updates)


def yank(record: ClaimRecord, now: datetime, why: str) -> ClaimRecord:
    if record.status is ClaimStatus.YANKED:
        raise LifecycleError(f"{record.id} is already yanked")
    if not why.strip():
        raise LifecycleError("--why must say why the claim is yanked")
    return with_entry(record, now, ClaimStatus.YANKED, why.strip())


def yank_reason(record: ClaimRecord) -> str | None:
    if record.status is not ClaimStatus.YANKED or not record.history:
        return None
    return record.history[-1].note


def is_published(record: ClaimRecord) -> bool:
    """Shown in the README as current: not yanked and not replaced by a newer measurement."""
    return record.status is not ClaimStatus.YANKED and record.superseded_by is None


def same_figure(a: ClaimRecord, b: ClaimRecord) -> bool:
    """A rerun: the same metric, on the same weights and the same hardware."""
    return (a.metric is not None and (a.metric, a.model, a.hardware)
            == (b.metric, b.model, b.hardware))


def relative_change(old: ClaimRecord, new: ClaimRecord) -> float:
    assert old.value is not None and new.value is not None
    return (new.value - old.value) / old.value if old.value else float("inf")


def supersede(old: ClaimRecord, new: ClaimRecord, now: datetime) -> ClaimRecord:
    """`new` reran `old`'s figure: `old` leaves the README; when the figure moved by more than
    the tolerance, `old` also needs review (was it wrong, or did something change?)."""
    change = relative_change(old, new)
    status = ClaimStatus.NEEDS_REVIEW if abs(change) > RERUN_TOLERANCE else old.status
    assert status is not None
    why = "more" if status is ClaimStatus.NEEDS_REVIEW else "no more"
    note = (f"superseded by {new.id}: the rerun differs by {change:+.1%} "
            f"({why} than {RERUN_TOLERANCE:.0%})")
    return with_entry(old, now, status, note, superseded_by=new.id)


def expired(record: ClaimRecord, now: datetime) -> bool:
    return (record.status is ClaimStatus.ACTIVE and record.review_by is not None
            and record.review_by <= now)


def due(records: list[ClaimRecord], now: datetime) -> list[tuple[ClaimRecord, str]]:
    """The claims that need review at `now` (UTC), each with why."""
    found = []
    for record in records:
        if record.status is ClaimStatus.NEEDS_REVIEW:
            assert record.history is not None
            found.append((record, f"needs-review since {rfc3339(record.history[-1].at)}: "
                                  f"{record.history[-1].note}"))
        elif expired(record, now):
            assert record.review_by is not None
            found.append((record, f"review_by {rfc3339(record.review_by)} has passed"))
    return found


def mark_due(record: ClaimRecord, now: datetime) -> ClaimRecord:
    """An expired claim written down as needs-review."""
    assert record.review_by is not None
    return with_entry(record, now, ClaimStatus.NEEDS_REVIEW,
                      f"review_by {rfc3339(record.review_by)} passed")


def dependency_changes(record: ClaimRecord,
                       running: dict[str, str]) -> list[tuple[str, str, str]]:
    """(package, recorded version, running version or 'not installed') for each difference."""
    recorded = record.dependencies or {}
    return [(name, version, running.get(name, "not installed"))
            for name, version in sorted(recorded.items()) if running.get(name) != version]
