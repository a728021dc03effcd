"""Contention control between a loop and the LLM engine beside it: the engine's threads are
kept off the loop's CPU (each thread's affinity set, as `taskset -a` does), reported as applied
or refused like the loop's own settings. The loop's SCHED_FIFO (os_setup.py) is the other half:
it preempts the engine's threads whenever it wakes."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from aruntime.realtime.os_setup import Setting


def threads_of(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def keep_off(pid: int, loop_cpus: Iterable[int]) -> Setting:
    """Every thread of process `pid` (and its children's, later) off `loop_cpus`."""
    others = set(os.sched_getaffinity(0)) - set(loop_cpus)
    if not others:
        return Setting("engine_affinity", False, "no CPU is left for the engine")
    moved, failed = 0, []
    for tid in threads_of(pid):
        try:
            os.sched_setaffinity(tid, others)
            moved += 1
        except OSError as exc:
            failed.append(f"{tid}: {exc.strerror}")
    if not moved:
        return Setting("engine_affinity", False, "; ".join(failed) or
                       f"no threads of {pid} ({Path(f'/proc/{pid}').exists()})")
    return Setting("engine_affinity", True, f"{moved} threads of {pid} on cpus {sorted(others)}")
