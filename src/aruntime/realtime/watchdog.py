"""A software watchdog with a lease: each period the loop reports how its step went — on time,
with fresh inputs, within its budget — and the watchdog answers which mode the next step runs
in. A missed deadline, a stale input or an overrun past the budget switches to the declared
fallback at once (within the period it was seen in), recording why; the loop returns to nominal
only when the conditions have held again for `recover_ns`. A lease not renewed for `lease_ns`
(the loop itself stalled) reads as expired, so whoever watches it from outside can act."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Mode(StrEnum):
    NOMINAL = "nominal"
    FALLBACK = "fallback"


class Reason(StrEnum):
    MISSED = "missed-deadline"
    STALE = "stale-input"
    OVERRUN = "overrun"


@dataclass(frozen=True, slots=True)
class Switch:
    at_ns: int
    to: Mode
    reasons: tuple[Reason, ...]


@dataclass
class Watchdog:
    lease_ns: int
    recover_ns: int  # conditions must hold this long before nominal returns
    budget_ns: int  # a step's compute past this is an overrun
    mode: Mode = Mode.NOMINAL
    switches: list[Switch] = field(default_factory=list)
    faults: list[Switch] = field(default_factory=list)  # every bad report, with its reasons
    _renewed_ns: int | None = None
    _good_since_ns: int | None = None

    def report(self, now_ns: int, *, missed: bool = False, stale: bool = False,
               step_ns: int = 0) -> Mode:
        """The step that ran at `now_ns` and how it went; the mode of the next."""
        self._renewed_ns = now_ns
        reasons = tuple(r for r, bad in ((Reason.MISSED, missed), (Reason.STALE, stale),
                                         (Reason.OVERRUN, step_ns > self.budget_ns)) if bad)
        if reasons:
            self._good_since_ns = None
            self.faults.append(Switch(now_ns, Mode.FALLBACK, reasons))
            if self.mode is Mode.NOMINAL:
                self._switch(now_ns, Mode.FALLBACK, reasons)
            return self.mode
        if self._good_since_ns is None:
            self._good_since_ns = now_ns
        if self.mode is Mode.FALLBACK and now_ns - self._good_since_ns >= self.recover_ns:
            self._switch(now_ns, Mode.NOMINAL, ())
        return self.mode

    def _switch(self, now_ns: int, to: Mode, reasons: tuple[Reason, ...]) -> None:
        self.mode = to
        self.switches.append(Switch(now_ns, to, reasons))

    def expired(self, now_ns: int) -> bool:
        """Whether the loop has not reported for longer than its lease."""
        return self._renewed_ns is not None and now_ns - self._renewed_ns > self.lease_ns
