"""`bench durable`'s step overhead: both systems on their SQLite files, each invocation timed
with durability on and again without it (the flow's functions called straight through, the
graph compiled without a checkpointer)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aruntime.bench.durable_work import (
    STEPS,
    THREE_STEPS,
    BareContext,
    graph_config,
    three_node_graph,
    three_steps,
)

SYSTEMS = {"aruntime": "aruntime (SqliteJournal, signed evidence)",
           "langgraph": "langgraph SqliteSaver, durability=sync",
           "langgraph_async": "langgraph SqliteSaver, durability=async"}


@dataclass(slots=True)
class StepRun:
    """One system's invocations in one round (seconds each)."""

    durable: list[float]
    bare: list[float]

    @property
    def overhead_ms(self) -> list[float]:
        bare = statistics.median(self.bare)
        return [(d - bare) / STEPS * 1e3 for d in self.durable]

    @property
    def p50(self) -> float:
        return statistics.median(self.overhead_ms)

    @property
    def p99(self) -> float:  # nearest rank: at least 99% of the runs at or below it
        ordered = sorted(self.overhead_ms)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]

    @property
    def steps_per_s(self) -> float:
        return STEPS * len(self.durable) / sum(self.durable)


def check_durability(system: str, read: Callable[[str], Any]) -> None:
    """Both connections read back as the claim says: WAL, synchronous=FULL (2)."""
    mode, sync = str(read("PRAGMA journal_mode")).lower(), int(read("PRAGMA synchronous"))
    if (mode, sync) != ("wal", 2):
        raise RuntimeError(f"{system}: journal_mode={mode}, synchronous={sync}; "
                           "the benchmark compares WAL with synchronous=FULL (2)")


def timed(fn: Callable[[int], Any], n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return times


class Systems:
    """Both systems on their files: ARuntime's journal, LangGraph's graphs over `saver`."""

    def __init__(self, workdir: Path, saver: Any) -> None:
        from aruntime.agents.runner import Runner
        from aruntime.durable.journal import SqliteJournal
        from aruntime.evidence.signing import DeploymentKey

        self.runner = Runner(SqliteJournal(workdir / "aruntime.db"),
                             signer=DeploymentKey.generate())  # evidence signed, as deployed
        self.graph, self.bare_graph = three_node_graph(saver), three_node_graph()
        check_durability("aruntime", lambda q: self.runner.journal.query(q)[0][0])
        check_durability("langgraph", lambda q: saver.conn.execute(q).fetchone()[0])

    def run(self, system: str, tag: str, n: int) -> StepRun:
        """`n` runs durable, then `n` bare, of one of SYSTEMS, each run a new run/thread id."""
        mode = "async" if system.endswith("async") else "sync"

        def durable(i: int) -> None:
            if system == "aruntime":
                r = self.runner.start(THREE_STEPS, 0, run_id=f"{tag}-{i}")
                assert r.status == "completed" and r.result == 6, r
            else:
                out = self.graph.invoke({"count": 0}, graph_config(f"{tag}-{i}"), durability=mode)
                assert out == {"count": 6}, out

        def bare(i: int) -> None:
            if system == "aruntime":
                three_steps(BareContext(), 0)
            else:
                self.bare_graph.invoke({"count": 0})

        return StepRun(timed(durable, n), timed(bare, n))

