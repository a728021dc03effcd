"""`Loop(period, deadline, on_miss)`: a step every period on absolute monotonic deadlines —
the k-th step is due at start + k * period, never after a sleep(period) that drifts by every
step's own time. Lateness (how late each wake-up came after the instant it waited for, as
cyclictest measures it: a stall past a period counts in full), misses (periods that passed
with no step) and overruns (a step finishing past its deadline) are counted per loop;
`on_miss` says what a late loop does: `skip` to the next period due (the default; a
controller wants the present, not a backlog) or `catch-up` (run every missed period at once,
as a fixed-step integrator needs).
Each step's outcome goes to the watchdog, whose mode the next step runs in, and its slack (the
time left before its deadline) to the loop's board, which the engine beside reads to yield
(engine/loop_board.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from aruntime.engine.loop_board import LoopBoard
from aruntime.realtime.clock import Clock, MonotonicClock
from aruntime.realtime.stats import Lateness
from aruntime.realtime.watchdog import Mode, Watchdog


class OnMiss(StrEnum):
    SKIP = "skip"
    CATCH_UP = "catch-up"


@dataclass(frozen=True, slots=True)
class Tick:
    index: int  # which period
    due_ns: int
    started_ns: int
    mode: Mode  # the watchdog's, for this step

    @property
    def lateness_ns(self) -> int:
        return self.started_ns - self.due_ns


Step = Callable[[Tick], bool]  # returns whether its inputs were fresh


@dataclass
class Loop:
    period_ns: int
    deadline_ns: int | None = None  # a step must end this long after it is due (default: period)
    on_miss: OnMiss = OnMiss.SKIP
    clock: Clock = field(default_factory=MonotonicClock)
    watchdog: Watchdog | None = None
    board: LoopBoard | None = None
    lateness: Lateness = field(default_factory=Lateness)
    steps: int = 0
    misses: int = 0
    overruns: int = 0

    def __post_init__(self) -> None:
        if self.period_ns <= 0:
            raise ValueError("a loop's period must be positive")
        self.deadline_ns = self.deadline_ns or self.period_ns

    def run(self, step: Step, ticks: int | None = None,
            stop: threading.Event | None = None) -> None:
        """Run `step` each period until `ticks` periods have passed or `stop` is set."""
        start = self.clock.now_ns()
        k = 0
        while (ticks is None or k < ticks) and not (stop is not None and stop.is_set()):
            due = start + k * self.period_ns
            self.clock.wait_until(due)
            k = self._one(step, k, due)

    def _one(self, step: Step, k: int, due: int) -> int:
        """Run period k's step; the next period to run."""
        started, woke_for = self.clock.now_ns(), due
        late_periods = (started - due) // self.period_ns
        if late_periods and self.on_miss is OnMiss.SKIP:  # start in the period we are in
            self.misses += late_periods
            k, due = k + late_periods, due + late_periods * self.period_ns
        mode = self.watchdog.mode if self.watchdog else Mode.NOMINAL
        fresh = step(Tick(k, due, started, mode))
        ended = self.clock.now_ns()
        self.steps += 1
        self.lateness.add(started - woke_for)
        slack = due + (self.deadline_ns or self.period_ns) - ended
        self.overruns += slack < 0
        if self.board is not None:
            self.board.publish(ended, slack)
        if self.watchdog is not None:
            self.watchdog.report(ended, missed=bool(late_periods) or slack < 0,
                                 stale=not fresh, step_ns=ended - started)
        return k + 1
