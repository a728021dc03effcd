"""UTC time, written one way: RFC 3339 with a `Z` suffix. Durations come from monotonic clocks
(`time.monotonic`), never from these wall-clock helpers."""

from __future__ import annotations

import re
from datetime import UTC, datetime

# Strict on purpose: an offset other than `Z` (even `+00:00`) means someone formatted a time by
# hand, and records that compare or hash times must all spell them the same way.
_RFC3339_Z = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z$")


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def rfc3339(dt: datetime) -> str:
    """`2025-01-02T03:04:05Z`, or with microseconds when there are any: `...05.250000Z`.

    A naive datetime is refused: guessing its zone is how off-by-hours bugs are born."""
    dt = _as_utc(dt)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}"
    return text + "Z"


def sortable_rfc3339(dt: datetime) -> str:
    """`2025-01-02T03:04:05.000000Z`: always six fraction digits, so that stored times compare
    as text in time order (rfc3339() would sort `…05.250000Z` before `…05Z`)."""
    return _as_utc(dt).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _as_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("naive datetime: give it a timezone (UTC) before formatting")
    return dt.astimezone(UTC)


def parse_rfc3339(text: str) -> datetime:
    """Parse `YYYY-MM-DDTHH:MM:SS[.fraction]Z` into an aware UTC datetime.

    Fractions beyond microseconds are truncated (Python's datetime holds no more)."""
    match = _RFC3339_Z.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not an RFC 3339 UTC time like '2025-01-02T03:04:05Z' (must end in 'Z')"
        )
    base, fraction = match.groups()
    micros = int((fraction or "0").ljust(6, "0")[:6])
    try:  # from the digits the pattern matched: strptime would cost a journal write 40 us
        return datetime(int(base[0:4]), int(base[5:7]), int(base[8:10]), int(base[11:13]),
                        int(base[14:16]), int(base[17:19]), micros, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid calendar time: {exc}") from None
