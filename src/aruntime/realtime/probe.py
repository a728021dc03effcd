"""One loop at a fixed period for a while, in a process of its own (so its real-time setup —
SCHED_FIFO, mlockall — stays with it), printing its lateness as JSON: what `aruntime bench
realtime` runs in each phase. `ours` is `Loop` on absolute deadlines, sleeping then spinning;
`naive` sleeps `period` after each step, as most Python loops do; its lateness is how late each
wake-up came after the instant it slept for.

    python -m aruntime.realtime.probe --seconds 10 --period-us 1000 --mode ours --rt --cpu 1

The first WARMUP_TICKS periods are run and left out of the figures: they hold the first calls'
page faults and cache misses, not the loop's steady state. `--board PATH` publishes each step's
slack for an engine started with that `loop_board`, which yields while the loop runs short of
`--floor-us`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from aruntime.engine.loop_board import LoopBoard
from aruntime.realtime import os_setup
from aruntime.realtime.loop import Loop, Tick
from aruntime.realtime.stats import Lateness


def _work() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small controller's step: a 64x64 matrix on a state vector, buffers made once."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, 64)) * 0.1, rng.standard_normal(64), np.empty(64)


WARMUP_TICKS = 200


def ours(seconds: float, period_ns: int, board: LoopBoard | None = None) -> dict[str, object]:
    gain, state, out = _work()

    def step(tick: Tick) -> bool:
        np.dot(gain, state, out=out)
        return True

    Loop(period_ns).run(step, ticks=WARMUP_TICKS)
    loop = Loop(period_ns, board=board)
    loop.run(step, ticks=int(seconds * 1e9 // period_ns))
    return {"lateness_us": loop.lateness.summary_us(), "lateness_ns": loop.lateness.samples_ns,
            "misses": loop.misses,
            "overruns": loop.overruns, "steps": loop.steps}


def naive(seconds: float, period_ns: int) -> dict[str, object]:
    gain, state, out = _work()
    lateness, misses = Lateness(), 0
    for k in range(WARMUP_TICKS + int(seconds * 1e9 // period_ns)):
        np.dot(gain, state, out=out)
        asked = time.monotonic_ns() + period_ns
        time.sleep(period_ns / 1e9)
        late = time.monotonic_ns() - asked
        if k >= WARMUP_TICKS:
            lateness.add(late)
            misses += late // period_ns
    return {"lateness_us": lateness.summary_us(), "lateness_ns": lateness.samples_ns,
            "misses": misses, "overruns": 0,
            "steps": len(lateness.samples_ns)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aruntime.realtime.probe")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--period-us", type=int, default=1000)
    p.add_argument("--mode", choices=("ours", "naive"), default="ours")
    p.add_argument("--rt", action="store_true", help="SCHED_FIFO, mlockall, a frozen GC")
    p.add_argument("--cpu", type=int, default=None, help="pin the loop to this CPU")
    p.add_argument("--board", default=None, metavar="PATH",
                   help="publish each step's slack here, for an engine to yield to")
    p.add_argument("--floor-us", type=int, default=None,
                   help="the least slack the loop wants (default: half its period)")
    args = p.parse_args(argv)
    period_ns = args.period_us * 1000
    floor_ns = period_ns // 2 if args.floor_us is None else args.floor_us * 1000
    settings = os_setup.apply(priority=80 if args.rt else None,
                              cpus=[args.cpu] if args.cpu is not None else None,
                              lock_memory=args.rt, freeze_gc=args.rt)
    if args.mode == "naive":
        result = naive(args.seconds, period_ns)
    else:
        board = (LoopBoard(args.board, period_ns, floor_ns, time.monotonic_ns())
                 if args.board else None)
        result = ours(args.seconds, period_ns, board)
    result["settings"] = [[s.name, s.applied, s.detail] for s in settings]
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
