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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aruntime.bench import claim, hardware
from aruntime.bench.durable_work import (
    BENCH_FLOW,
    PRAGMAS,
    STEPS,
    THREE_STEPS,
    BareContext,
    graph_config,
    loop_graph,
    sqlite_saver,
    three_node_graph,
    three_steps,
)
from aruntime.bench.stats import median_of


@dataclass(frozen=True, slots=True)
class DurableWorkload:
    invocations: int = 1000  # per system and round, durable; as many bare
    rounds: int = 3  # each system runs this often, alternating; its median round counts
    warmup: int = 20  # invocations of each kind before the first round
    recovery_steps: int = 200  # the long run killed mid-way, once a round per system
    kill_after: int = 100  # steps journaled before the SIGKILL

    def __post_init__(self) -> None:
        assert self.invocations >= 1 and self.rounds >= 1 and self.warmup >= 0
        assert 1 <= self.kill_after < self.recovery_steps

    def describe(self) -> str:
        return (f"3-step flow / 3-node graph (each step adds to a counter), {self.invocations} "
                f"runs per system a round, each a new run/thread id; SQLite WAL synchronous=FULL "
                f"both; LangGraph durability=sync; median of {self.rounds} alternating rounds; "
                f"recovery: {self.recovery_steps}-step run SIGKILLed after {self.kill_after}")


QUICK = DurableWorkload(invocations=500, rounds=2, warmup=10)
FULL = DurableWorkload()


# ---- step overhead -------------------------------------------------------------------------


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


# ---- recovery after SIGKILL ----------------------------------------------------------------


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


# ---- the benchmark -------------------------------------------------------------------------

SYSTEMS = {"aruntime": "aruntime (SqliteJournal, signed evidence)",
           "langgraph": "langgraph SqliteSaver, durability=sync",
           "langgraph_async": "langgraph SqliteSaver, durability=async"}


@dataclass(slots=True)
class Round:
    steps: dict[str, StepRun]  # by SYSTEMS key
    recovery: dict[str, Recovery]  # "aruntime", "langgraph"


@dataclass(slots=True)
class BenchResult:
    record: dict[str, Any]  # the claim record
    report: str  # what was printed on stdout, ratio last
    raw_log: str  # every invocation's time and every recovery, then the report
    rounds: list[Round]


def filesystem(path: Path) -> str:
    """The filesystem holding `path` (type and device), from /proc/mounts where there is one."""
    try:
        mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown filesystem"
    device, _, fstype = max((m for m in mounts if str(path.resolve()).startswith(m[1])),
                            key=lambda m: len(m[1]))
    return f"{fstype} ({device})"


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
              progress: TextIO | None = None) -> BenchResult:
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
    rounds = run_rounds(workdir, workload, lambda msg: print(
        f"[bench] {msg}", file=progress or sys.stderr, flush=True))
    result = summarise(workload, workdir, rounds, floor, time.perf_counter() - started,
                       json_path)
    if json_path is not None:
        claim.write_claim(json_path, result.record, result.raw_log)
    out = out or sys.stdout
    out.write(result.report)
    out.flush()
    return result


def step_metrics(prefix: str, run: StepRun) -> dict[str, float | int | str]:
    return {f"{prefix}step_p50_ms": round(run.p50, 4), f"{prefix}step_p99_ms": round(run.p99, 4),
            f"{prefix}steps_per_s": round(run.steps_per_s, 1),
            f"{prefix}durable_step_p50_ms": round(statistics.median(run.durable) / STEPS * 1e3, 4),
            f"{prefix}bare_run_ms": round(statistics.median(run.bare) * 1e3, 4)}


def recovery_metrics(prefix: str, r: Recovery) -> dict[str, float | int | str]:
    return {f"{prefix}recovery_s": round(r.recovery_s, 4),
            f"{prefix}recovery_first_step_s": round(r.first_step_s, 4),
            f"{prefix}recovery_killed_at_step": r.killed_at}


def summarise(w: DurableWorkload, workdir: Path, rounds: list[Round], floor: float,
              duration: float, json_path: Path | None) -> BenchResult:
    """The median rounds' figures: the claim record, the report (ratio last) and the raw log."""
    from importlib.metadata import version

    steps = {key: median_of([r.steps[key] for r in rounds], lambda s: s.p50) for key in SYSTEMS}
    rec = {key: median_of([r.recovery[key] for r in rounds], lambda x: x.recovery_s)
           for key in rounds[0].recovery}
    value, baseline = round(steps["aruntime"].p50, 4), round(steps["langgraph"].p50, 4)
    ratio = baseline / value  # the last line; the record's ratio is value / baseline
    lg = (f"langgraph {version('langgraph')} + langgraph-checkpoint-sqlite "
          f"{version('langgraph-checkpoint-sqlite')} SqliteSaver")
    disk = filesystem(workdir)
    metrics = {**step_metrics("", steps["aruntime"]), **recovery_metrics("", rec["aruntime"]),
               **step_metrics("baseline_", steps["langgraph"]),
               **recovery_metrics("baseline_", rec["langgraph"]),
               **step_metrics("baseline_async_", steps["langgraph_async"]),
               "step_overhead_ratio": round(ratio, 3), "recovery_steps": w.recovery_steps,
               "sqlite_journal_mode": "WAL", "sqlite_synchronous": "FULL",
               "fsync": "on: synchronous=FULL fsyncs the WAL at every commit",
               "sqlite_version": sqlite3.sqlite_version, "filesystem": disk,
               "sqlite_commit_p50_ms": round(floor, 4),
               "invocations_per_round": w.invocations, "rounds": len(rounds)}
    hw = hardware.describe("cpu")
    report = render(w, rounds, steps, rec, ratio, lg, f"{hardware.summary(hw)}; SQLite "
                    f"{sqlite3.sqlite_version} on {disk}, one-row commit (an fsync) "
                    f"{floor:.3f} ms p50", duration, json_path)
    raw_log = "\n".join([*raw_rows(rounds), f"# hardware {json.dumps(hw)}",
                         f"# metrics {json.dumps(metrics)}", "", report])
    record = claim.build_claim(
        statement=(f"A durable ARuntime flow step (SQLite journal, WAL, synchronous=FULL, signed "
                   f"evidence) adds {value:.3f} ms at p50 over the bare step; {lg} adds "
                   f"{baseline:.3f} ms on the same 3-node graph at the same durability "
                   f"(langgraph-sqlite / aruntime {ratio:.2f}), measured in the same run"),
        metric="step_overhead_p50", value=value, unit="ms", direction="lower-is-better",
        baseline_name=f"{lg}, durability=sync", baseline_value=baseline, metrics=metrics,
        model=f"aruntime-bench-durable@{source_digest()}",
        hardware=f"{hardware.summary(hw)}; SQLite on {disk}"[:255], workload=w.describe(),
        precision="n/a (no model)", context=0, concurrency=1, seed=0,
        duration_s=round(duration, 2), percentile="p50", raw_log=raw_log)
    return BenchResult(record, report, raw_log, rounds)


def source_digest() -> str:
    """No model runs here: the claim's `model` names this benchmark's own source, by digest."""
    work = Path(__file__).with_name("durable_work.py")
    return "sha256:" + claim.sha256_text("".join(
        p.read_text(encoding="utf-8") for p in (Path(__file__), work)))


def render(w: DurableWorkload, rounds: list[Round], steps: dict[str, StepRun],
           rec: dict[str, Recovery], ratio: float, lg: str, hw: str, duration: float,
           json_path: Path | None) -> str:
    lines = [f"aruntime bench durable: 3-step flow against {lg}", f"hardware: {hw}",
             f"workload: {w.describe()}", "",
             (f"{'system':<44}{'step p50 ms':>12}{'step p99 ms':>12}{'steps/s':>10}"
              f"{'run ms':>9}{'bare run ms':>13}")]
    for key, run in steps.items():
        lines.append(f"{SYSTEMS[key]:<44}{run.p50:>12.3f}{run.p99:>12.3f}"
                     f"{run.steps_per_s:>10.0f}{statistics.median(run.durable) * 1e3:>9.3f}"
                     f"{statistics.median(run.bare) * 1e3:>13.4f}")
    facts = [("step overhead", "(durable run - median bare run) / 3 for each run; p50, p99"),
             ("step p50 ms per round (median counts)", "; ".join(
                 f"{key} " + " / ".join(f"{r.steps[key].p50:.3f}" for r in rounds)
                 for key in SYSTEMS))]
    facts += [(f"recovery, {key}", (f"{r.recovery_s:.3f} s from resume to completed, first "
               f"new step at {r.first_step_s * 1e3:.1f} ms (killed at step {r.killed_at} of "
               f"{w.recovery_steps})")) for key, r in rec.items()]
    facts += [("recovery measured", "SIGKILL of a child process; resumed in this process"),
              ("ratio against langgraph async (default)",
               f"{steps['langgraph_async'].p50 / steps['aruntime'].p50:.2f}"),
              ("duration", f"{duration:.1f} s")]
    lines += [""] + [f"{label + ':':<42}{text}" for label, text in facts]
    if json_path is not None:
        lines.append(f"claim record: {json_path} (raw log: {json_path}.log)")
    lines.append(f"step overhead ratio langgraph-sqlite / aruntime: {ratio:.2f}")
    return "\n".join(lines) + "\n"


def raw_rows(rounds: list[Round]) -> list[str]:
    """Every invocation's time (ms) and every recovery, round by round."""
    rows = []
    for i, r in enumerate(rounds, 1):
        rows += [json.dumps({"round": i, "system": key, "step_p50_ms": round(run.p50, 4),
                             "step_p99_ms": round(run.p99, 4),
                             "durable_ms": [round(t * 1e3, 4) for t in run.durable],
                             "bare_ms": [round(t * 1e3, 4) for t in run.bare]})
                 for key, run in r.steps.items()]
        rows += [json.dumps({"round": i, "system": key, "killed_at": x.killed_at,
                             "recovery_s": round(x.recovery_s, 5),
                             "first_step_s": round(x.first_step_s, 5)})
                 for key, x in r.recovery.items()]
    return rows


# ---- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.invocations} runs a round, {QUICK.rounds} rounds "
                             "(about 20 s)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="write the claim record here (and the raw log to FILE.log)")
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="where the SQLite files go (default: a temporary directory); its "
                             "disk is what fsync measures")


def run(args: argparse.Namespace) -> int:
    from aruntime.errors import UsageError

    if args.json is not None and args.json.is_dir():
        raise UsageError(f"--json {args.json} is a directory; give a file name")
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401 - the baseline
    except ImportError:
        raise UsageError("the baseline needs LangGraph: pip install langgraph "
                         "langgraph-checkpoint-sqlite") from None
    run_bench(QUICK if args.quick else FULL, workdir=args.dir, json_path=args.json)
    return 0
