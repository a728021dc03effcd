"""The opt-in real-time setup of a loop's thread, each setting reported as applied or refused
(with the OS's reason), never assumed: SCHED_FIFO at a priority, CPU affinity, `mlockall` of
current and future pages (no page fault inside a period), and the garbage collector — objects
alive now frozen out of its scans (`gc.freeze`), collection off while the loop runs. What the
ros2_control users ask for (ros2_control#736), as one call."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Iterable
from dataclasses import dataclass

MCL_CURRENT, MCL_FUTURE = 1, 2


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    applied: bool
    detail: str  # what was set, or why the OS refused it


def _fifo(priority: int) -> Setting:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        return Setting("sched_fifo", False, f"priority {priority}: {exc}")
    return Setting("sched_fifo", True, f"priority {priority}")


def _affinity(cpus: Iterable[int]) -> Setting:
    wanted = set(cpus)
    try:
        os.sched_setaffinity(0, wanted)
    except (OSError, AttributeError) as exc:
        return Setting("affinity", False, f"cpus {sorted(wanted)}: {exc}")
    return Setting("affinity", True, f"cpus {sorted(os.sched_getaffinity(0))}")


def _mlockall() -> Setting:
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path, use_errno=True) if path else None
    if libc is None or libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        errno = ctypes.get_errno() if libc is not None else 0
        return Setting("mlockall", False, os.strerror(errno) if errno else "no libc")
    return Setting("mlockall", True, "current and future pages")


def apply(priority: int | None = 80, cpus: Iterable[int] | None = None,
          lock_memory: bool = True, freeze_gc: bool = True) -> list[Setting]:
    """Set up the calling thread (and, for memory, the process) for a loop; what took."""
    out = []
    if priority is not None:
        out.append(_fifo(priority))
    if cpus is not None:
        out.append(_affinity(cpus))
    if lock_memory:
        out.append(_mlockall())
    if freeze_gc:
        gc.collect()
        gc.freeze()
        gc.disable()
        out.append(Setting("gc", True, f"{gc.get_freeze_count()} objects frozen, collection off"))
    return out


def release_gc() -> None:
    """The collector back on, after the loop (frozen objects stay out of its scans)."""
    gc.enable()
