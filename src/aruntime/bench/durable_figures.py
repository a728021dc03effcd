"""`bench durable`'s figures: each system's median round, the report (ratio last), the raw log
of every invocation and recovery, and the claim."""

from __future__ import annotations

import json
import sqlite3
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from aruntime.bench import hardware
from aruntime.bench.claim import ClaimSpec, sha256_text
from aruntime.bench.durable_recovery import Recovery
from aruntime.bench.durable_steps import SYSTEMS, StepRun
from aruntime.bench.durable_work import STEPS
from aruntime.bench.durable_workload import DurableWorkload
from aruntime.bench.report import Outcome, Report
from aruntime.bench.stats import median_of

Metrics = dict[str, float | int | str]
# No model runs here: the claim's `model` names this benchmark's own source, by digest.
SOURCES = ("durable.py", "durable_work.py", "durable_workload.py", "durable_steps.py",
           "durable_recovery.py", "durable_figures.py", "report.py")


@dataclass(slots=True)
class Round:
    steps: dict[str, StepRun]  # by SYSTEMS key
    recovery: dict[str, Recovery]  # "aruntime", "langgraph"


@dataclass(slots=True)
class DurableResult(Outcome):
    rounds: list[Round]


@dataclass(frozen=True, slots=True)
class Measured:
    workload: DurableWorkload
    workdir: Path  # where the SQLite files were: its disk is what fsync measures
    rounds: list[Round]
    floor_ms: float  # a one-row SQLite commit there, p50
    duration_s: float


def filesystem(path: Path) -> str:
    """The filesystem holding `path` (type and device), from /proc/mounts where there is one."""
    try:
        mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown filesystem"
    device, _, fstype = max((m for m in mounts if str(path.resolve()).startswith(m[1])),
                            key=lambda m: len(m[1]))
    return f"{fstype} ({device})"


def source_digest() -> str:
    here = Path(__file__).parent
    return "sha256:" + sha256_text("".join(
        (here / name).read_text(encoding="utf-8") for name in SOURCES))


def step_metrics(prefix: str, run: StepRun) -> Metrics:
    return {f"{prefix}step_p50_ms": round(run.p50, 4), f"{prefix}step_p99_ms": round(run.p99, 4),
            f"{prefix}steps_per_s": round(run.steps_per_s, 1),
            f"{prefix}durable_step_p50_ms": round(statistics.median(run.durable) / STEPS * 1e3, 4),
            f"{prefix}bare_run_ms": round(statistics.median(run.bare) * 1e3, 4)}


def recovery_metrics(prefix: str, r: Recovery) -> Metrics:
    return {f"{prefix}recovery_s": round(r.recovery_s, 4),
            f"{prefix}recovery_first_step_s": round(r.first_step_s, 4),
            f"{prefix}recovery_killed_at_step": r.killed_at}


def metrics(m: Measured, steps: dict[str, StepRun], rec: dict[str, Recovery], ratio: float,
            disk: str) -> Metrics:
    w = m.workload
    return {**step_metrics("", steps["aruntime"]), **recovery_metrics("", rec["aruntime"]),
            **step_metrics("baseline_", steps["langgraph"]),
            **recovery_metrics("baseline_", rec["langgraph"]),
            **step_metrics("baseline_async_", steps["langgraph_async"]),
            "step_overhead_ratio": round(ratio, 3), "recovery_steps": w.recovery_steps,
            "sqlite_journal_mode": "WAL", "sqlite_synchronous": "FULL",
            "fsync": "on: synchronous=FULL fsyncs the WAL at every commit",
            "sqlite_version": sqlite3.sqlite_version, "filesystem": disk,
            "sqlite_commit_p50_ms": round(m.floor_ms, 4),
            "invocations_per_round": w.invocations, "rounds": len(m.rounds)}


def table(steps: dict[str, StepRun]) -> list[str]:
    lines = [f"{'system':<44}{'step p50 ms':>12}{'step p99 ms':>12}{'steps/s':>10}"
             f"{'run ms':>9}{'bare run ms':>13}"]
    lines += [f"{SYSTEMS[key]:<44}{run.p50:>12.3f}{run.p99:>12.3f}"
              f"{run.steps_per_s:>10.0f}{statistics.median(run.durable) * 1e3:>9.3f}"
              f"{statistics.median(run.bare) * 1e3:>13.4f}" for key, run in steps.items()]
    return lines


def facts(m: Measured, steps: dict[str, StepRun],
          rec: dict[str, Recovery]) -> list[tuple[str, str]]:
    w = m.workload
    out = [("step overhead", "(durable run - median bare run) / 3 for each run; p50, p99"),
           ("step p50 ms per round (median counts)", "; ".join(
               f"{key} " + " / ".join(f"{r.steps[key].p50:.3f}" for r in m.rounds)
               for key in SYSTEMS))]
    out += [(f"recovery, {key}", (f"{r.recovery_s:.3f} s from resume to completed, first "
             f"new step at {r.first_step_s * 1e3:.1f} ms (killed at step {r.killed_at} of "
             f"{w.recovery_steps})")) for key, r in rec.items()]
    out += [("recovery measured", "SIGKILL of a child process; resumed in this process"),
            ("ratio against langgraph async (default)",
             f"{steps['langgraph_async'].p50 / steps['aruntime'].p50:.2f}"),
            ("duration", f"{m.duration_s:.1f} s")]
    return out


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


def outcome(m: Measured, json_path: Path | None, out: TextIO | None) -> DurableResult:
    """The median rounds' figures: the report (ratio last), the raw log and the claim record."""
    from importlib.metadata import version

    steps = {key: median_of([r.steps[key] for r in m.rounds], lambda s: s.p50) for key in SYSTEMS}
    rec = {key: median_of([r.recovery[key] for r in m.rounds], lambda x: x.recovery_s)
           for key in m.rounds[0].recovery}
    value, baseline = round(steps["aruntime"].p50, 4), round(steps["langgraph"].p50, 4)
    ratio = baseline / value  # the last line; the record's ratio is value / baseline
    lg = (f"langgraph {version('langgraph')} + langgraph-checkpoint-sqlite "
          f"{version('langgraph-checkpoint-sqlite')} SqliteSaver")
    disk = filesystem(m.workdir)
    figures = metrics(m, steps, rec, ratio, disk)
    hw = hardware.describe("cpu")
    report = Report(out)
    report.lines([f"aruntime bench durable: 3-step flow against {lg}",
                  f"hardware: {hardware.summary(hw)}; SQLite {sqlite3.sqlite_version} on {disk}, "
                  f"one-row commit (an fsync) {m.floor_ms:.3f} ms p50",
                  f"workload: {m.workload.describe()}", "", *table(steps)])
    report.facts(facts(m, steps, rec), 42)
    report.rows(raw_rows(m.rounds))
    report.reading("hardware", hw)
    report.reading("metrics", figures)
    claim = ClaimSpec(
        statement=(f"A durable ARuntime flow step (SQLite journal, WAL, synchronous=FULL, signed "
                   f"evidence) adds {value:.3f} ms at p50 over the bare step; {lg} adds "
                   f"{baseline:.3f} ms on the same 3-node graph at the same durability "
                   f"(langgraph-sqlite / aruntime {ratio:.2f}), measured in the same run"),
        metric="step_overhead_p50", value=value, unit="ms", direction="lower-is-better",
        baseline_name=f"{lg}, durability=sync", baseline_value=baseline, metrics=figures,
        model=f"aruntime-bench-durable@{source_digest()}",
        hardware=f"{hardware.summary(hw)}; SQLite on {disk}"[:255],
        workload=m.workload.describe(), precision="n/a (no model)", context=0, concurrency=1,
        seed=0, duration_s=round(m.duration_s, 2), percentile="p50")
    done = report.finish(f"step overhead ratio langgraph-sqlite / aruntime: {ratio:.2f}", claim,
                         json_path)
    return DurableResult(done.record, done.report, done.raw_log, m.rounds)
