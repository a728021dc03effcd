"""`aruntime bench durable`: what a durable step costs, against LangGraph's own SqliteSaver.

The same work runs through both systems: three trivial steps, each adding to a counter —
ARuntime's `three_steps` flow (a new run id per invocation) and a 3-node LangGraph `StateGraph`
(a new thread id per invocation). Each is timed per invocation with durability on and again
without it (the flow's functions called straight through, the graph compiled without a
checkpointer); a step's overhead is (durable invocation - median bare invocation) / 3, so run
start and finish are shared out over the steps. Both journals are SQLite files in the same
directory, WAL, `synchronous=FULL`: ARuntime's journal sets that itself; SqliteSaver sets WAL
only, so the benchmark sets both pragmas on the connection it hands it. LangGraph runs with
`durability="sync"` (each step's checkpoint is on disk before the next step starts, ARuntime's
own guarantee); its default, `"async"`, is measured beside it and reported, not compared.

Recovery: a 200-step flow (a 200-step loop graph for LangGraph) runs in a child process, is
SIGKILLed once half its steps are journaled, and is resumed in this process (`Runner.resume`,
LangGraph's `invoke(None)` on the thread), timed from the call to completion (`recovery_s`),
and to the first step it journals anew (`first_step_s`: the replay).

Rounds alternate which system goes first; each system's median round counts. The disk's floor,
a one-row SQLite commit in the same directory (one fsync), is measured first and reported.

This module measures, in that order, and holds the command line; the workload, the step
timings, the recovery and the figures each have their own `durable_*` module.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from aruntime.bench.durable_figures import DurableResult, Measured, Round, outcome
from aruntime.bench.durable_recovery import RECOVERIES
from aruntime.bench.durable_steps import SYSTEMS, Systems, timed
from aruntime.bench.durable_work import PRAGMAS, sqlite_saver
from aruntime.bench.durable_workload import FULL, QUICK, DurableWorkload
from aruntime.bench.report import add_json_argument, json_path, progress_notes


def commit_ms(path: Path, n: int = 300) -> float:
    """The disk's floor: the median ms of a one-row SQLite commit here (WAL, synchronous=FULL),
    one fsync of the WAL each. Both systems' figures are in units of it."""
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit: a commit per INSERT
    try:
        for pragma in PRAGMAS:
            conn.execute(pragma)
        conn.execute("CREATE TABLE IF NOT EXISTS probe (i INTEGER)")
        return statistics.median(timed(lambda i: conn.execute(
            "INSERT INTO probe VALUES (?)", (i,)), n)) * 1e3
    finally:
        conn.close()


def run_rounds(workdir: Path, w: DurableWorkload, note: Callable[[str], None]) -> list[Round]:
    """Every round's step runs, then its recoveries; the systems' order alternates by round."""
    rounds = []
    with sqlite_saver(workdir / "langgraph.db") as saver:
        systems = Systems(workdir, saver)
        try:
            for system in SYSTEMS:
                systems.run(system, f"warmup-{system}", w.warmup)
            for i in range(1, w.rounds + 1):
                note(f"round {i} of {w.rounds}: {w.invocations} runs per system, then recovery")
                order = list(SYSTEMS) if i % 2 else list(SYSTEMS)[::-1]
                steps = {system: systems.run(system, f"r{i}-{system}", w.invocations)
                         for system in order}
                recovery = {name: RECOVERIES[name](workdir, f"r{i}", w)
                            for name in list(RECOVERIES)[::1 if i % 2 else -1]}
                rounds.append(Round(steps, recovery))
        finally:
            systems.runner.journal.close()
    return rounds


def run_bench(workload: DurableWorkload, *, workdir: Path | None = None,
              json_path: Path | None = None, out: TextIO | None = None,
              progress: TextIO | None = None) -> DurableResult:
    """Measure both systems in one run, print the report (to `out`, default stdout; progress
    notes to stderr) and write the claim record if asked. The SQLite files go in `workdir`
    (default: a temporary directory, removed after): its disk is what fsync measures."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="aruntime-bench-durable-") as tmp:
            return run_bench(workload, workdir=Path(tmp), json_path=json_path, out=out,
                             progress=progress)
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    floor = commit_ms(workdir / "commit-probe.db")
    rounds = run_rounds(workdir, workload, progress_notes(progress))
    measured = Measured(workload, workdir, rounds, floor, time.perf_counter() - started)
    return outcome(measured, json_path, out)


# ---- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.invocations} runs a round, {QUICK.rounds} rounds "
                             "(about 20 s)")
    add_json_argument(parser)
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="where the SQLite files go (default: a temporary directory); its "
                             "disk is what fsync measures")


def run(args: argparse.Namespace) -> int:
    from aruntime.errors import UsageError

    json_path(args)  # a directory is a usage error, before anything runs
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401 - the baseline
    except ImportError:
        raise UsageError("the baseline needs LangGraph: pip install langgraph "
                         "langgraph-checkpoint-sqlite") from None
    run_bench(QUICK if args.quick else FULL, workdir=args.dir, json_path=args.json)
    return 0
