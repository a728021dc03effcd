"""`bench durable`'s recovery: a long run in a child process, SIGKILLed once half its steps are
journaled, then resumed in this process (`Runner.resume`; LangGraph's `invoke(None)` on the
thread), timed to completion and to the first step it journals anew."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aruntime.bench.durable_work import BENCH_FLOW, graph_config, loop_graph, sqlite_saver
from aruntime.bench.durable_workload import DurableWorkload


@dataclass(slots=True)
class Recovery:
    killed_at: int  # steps journaled when the process died
    recovery_s: float  # resume call -> completed
    first_step_s: float  # resume call -> the first step journaled anew


def kill_when(proc: subprocess.Popen[bytes], journaled: Callable[[], int], n: int) -> int:
    """SIGKILL `proc` once `journaled()` reaches n; the steps journaled when it died."""
    deadline = time.monotonic() + 120
    while journaled() < n:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-500:] if proc.stderr else ""
            raise RuntimeError(f"the recovery run ended (exit {proc.returncode}) before {n} "
                               f"steps were journaled: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the recovery run journaled under {n} steps in 120 s")
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    if proc.wait(timeout=30) != -signal.SIGKILL:
        raise RuntimeError("the recovery run finished before the kill landed: give it more steps")
    return journaled()


def child(argv: list[str], home: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ARUNTIME_HOME": str(home)}
    return subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def recover_aruntime(workdir: Path, tag: str, w: DurableWorkload) -> Recovery:
    """`aruntime run` in a child, killed; then `Runner.resume` here, timed."""
    from aruntime.agents.runner import Runner
    from aruntime.durable.journal import SqliteJournal
    from aruntime.evidence.signing import DeploymentKey, default_key_path
    from aruntime.timeutil import parse_rfc3339

    path, home, run_id = workdir / f"recovery-{tag}.db", workdir / "home", f"recovery-{tag}"
    journal = SqliteJournal(path)
    proc = child(["-m", "aruntime.cli", "run", BENCH_FLOW, "--input", str(w.recovery_steps),
                  "--run-id", run_id, "--journal", str(path)], home)
    killed_at = kill_when(proc, lambda: len(journal.entries(run_id)), w.kill_after)
    runner = Runner(journal, signer=DeploymentKey.load_or_create(default_key_path(home / "data")))
    wall0, t0 = time.time(), time.perf_counter()
    result = runner.resume(run_id)
    recovery_s = time.perf_counter() - t0
    if result.status != "completed" or result.result != w.recovery_steps:
        raise RuntimeError(f"the recovered run did not complete as it should: {result}")
    entries = journal.entries(run_id)
    if len(entries) != w.recovery_steps:
        raise RuntimeError(f"the recovered run journaled {len(entries)} steps, not "
                           f"{w.recovery_steps}")
    first = parse_rfc3339(entries[killed_at].updated_at).timestamp() - wall0
    journal.close()
    return Recovery(killed_at, recovery_s, first)


def recover_langgraph(workdir: Path, tag: str, w: DurableWorkload) -> Recovery:
    """The loop graph in a child, killed; then `invoke(None)` on its thread here, timed."""
    from datetime import datetime

    path, thread = workdir / f"recovery-{tag}-langgraph.db", f"recovery-{tag}"
    with sqlite_saver(path) as saver:  # the tables exist before the child or the poll looks
        def journaled() -> int:  # checkpoints past the input's two (steps -1 and 0): one a step
            rows = saver.conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = ?",
                                      (thread,)).fetchone()
            return max(0, int(rows[0]) - 2)

        code = ("import sys; from aruntime.bench.durable_work import run_loop_graph; "
                "run_loop_graph(sys.argv[1], sys.argv[2], int(sys.argv[3]))")
        proc = child(["-c", code, str(path), thread, str(w.recovery_steps)], workdir / "home")
        killed_at = kill_when(proc, journaled, w.kill_after)
        graph = loop_graph(saver, w.recovery_steps)
        wall0, t0 = time.time(), time.perf_counter()
        out = graph.invoke(None, graph_config(thread, w.recovery_steps), durability="sync")
        recovery_s = time.perf_counter() - t0
        if out != {"count": w.recovery_steps}:
            raise RuntimeError(f"the recovered graph ended at {out}")
        stamps = [datetime.fromisoformat(t.checkpoint["ts"]).timestamp()
                  for t in saver.list({"configurable": {"thread_id": thread}})]
    first = min(s for s in stamps if s >= wall0) - wall0
    return Recovery(killed_at, recovery_s, first)


RECOVERIES = {"aruntime": recover_aruntime, "langgraph": recover_langgraph}

