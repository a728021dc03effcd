"""What the engine does before each step when a real-time loop runs beside it
(`EngineConfig.loop_board`): it yields — sleeps a few of the loop's periods, up to a bound a
step — while the loop's board (engine/loop_board.py) shows a step that ended with less slack
than the loop's declared floor, so a loop under pressure gets the machine back; and it runs as
many torch threads as the CPUs it is left, so an engine kept off the loop's CPU
(realtime/contention.py) does not run two threads on one core, each waiting on the other.
A loop that stopped publishing (no step for GONE_PERIODS periods) is no longer yielded to."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aruntime.engine.loop_board import BoardReader, Reading

PAUSE_PERIODS = 2  # one yield: this many of the loop's periods
MAX_WAIT_NS = 20_000_000  # and at most this long before any one step
GONE_PERIODS = 100


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


@dataclass
class StepGate:
    reader: BoardReader
    threads: int  # the engine's torch threads on every CPU it started with
    now_ns: Callable[[], int] = time.monotonic_ns
    sleep: Callable[[float], None] = time.sleep
    cpus: Callable[[], int] = _cpus
    set_threads: Callable[[int], None] = _set_threads
    yields: int = 0
    waited_ns: int = 0
    _cpu_count: int = field(default=0, init=False)

    def before_step(self) -> None:
        self._follow_cpus()
        reading = self.reader.read()
        waited = 0
        while reading is not None and self._short(reading) and waited < MAX_WAIT_NS:
            pause = min(PAUSE_PERIODS * reading.period_ns, MAX_WAIT_NS - waited)
            self.sleep(pause / 1e9)
            waited += pause
            self.yields += 1
            reading = self.reader.read()
        self.waited_ns += waited

    def _short(self, reading: Reading) -> bool:
        gone = self.now_ns() - reading.last_ended_ns > GONE_PERIODS * reading.period_ns
        if gone and reading.last_ended_ns:  # reopened next time: the loop may start anew
            self.reader.close()
        return reading.short and not gone

    def _follow_cpus(self) -> None:
        """Only a change of CPUs changes the threads: a count the user chose stays."""
        n = self.cpus()
        if n != self._cpu_count:
            if self._cpu_count:
                self.set_threads(max(1, min(self.threads, n)))
            self._cpu_count = n
