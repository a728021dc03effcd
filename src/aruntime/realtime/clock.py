"""Time as a loop sees it: monotonic nanoseconds and a wait until an absolute instant. The
monotonic clock sleeps until `margin_ns` before the instant, then spins (a sleep alone wakes
late by the scheduler's slack); the simulated clock advances only when waited on, so a test or
a replay runs a loop's logic exactly, without timing anything."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

MARGIN_NS = 200_000  # wake this early from sleep, then spin (measured: PERF_NOTES, issue 18)


class Clock(ABC):
    @abstractmethod
    def now_ns(self) -> int: ...

    @abstractmethod
    def wait_until(self, at_ns: int) -> None:
        """Return at `at_ns` or as soon after as the clock can (at once if it has passed)."""


class MonotonicClock(Clock):
    def __init__(self, margin_ns: int = MARGIN_NS) -> None:
        self.margin_ns = margin_ns

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def wait_until(self, at_ns: int) -> None:
        ahead = at_ns - time.monotonic_ns() - self.margin_ns
        if ahead > 0:
            time.sleep(ahead / 1e9)
        while time.monotonic_ns() < at_ns:
            pass  # the margin: spin, so the wake-up is not the scheduler's


class SimulatedClock(Clock):
    """Virtual time: `wait_until` jumps to the instant; `advance` is work taking time (a step
    that overruns, a stall). What a loop does is then a function of its inputs alone."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def wait_until(self, at_ns: int) -> None:
        self._now = max(self._now, at_ns)

    def advance(self, ns: int) -> None:
        self._now += ns
