"""`aruntime bench realtime [--quick] [--json FILE]`: a 1 kHz loop (realtime/probe.py, a process
of its own) idle, then while the LLM engine serves a batch load in another process — without
control, with control (the loop's SCHED_FIFO, mlockall and frozen GC, pinned to the last CPU;
and again with the engine's threads kept off that CPU) — against a naive `time.sleep` loop under
the same load, in one run: lateness p50/p99/p99.9/max, misses, the engine's tokens/s in each
phase, and a 1 MB state restore's time. Ratio last: naive p99.9 / ours p99.9 under load (with
the loop's control; the engine's affinity is reported beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aruntime.bench.report import Outcome, Report, add_json_argument, json_path, progress_notes

# the engine's load: batches of greedy requests, one line of cumulative tokens after each
LOAD = """
import sys, time
from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import checked_model
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams
engine = LLMEngine(EngineConfig(model=str(checked_model(sys.argv[1]))))
params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
done = 0
while True:
    prompts = [[(7 * i + j) % 200 + 10 for j in range(48)] for i in range(8)]
    done += sum(len(o.new_token_ids) for o in engine.generate(prompts, params))
    print(time.monotonic(), done, flush=True)
"""


@dataclass(frozen=True)
class Workload:
    seconds: float  # each phase
    period_us: int
    model: str

    def describe(self) -> str:
        return (f"a {1e6 / self.period_us:.0f} Hz loop, {self.seconds:g} s a phase; the engine "
                f"({self.model}) generating 8 x 48-token prompts, 16 new tokens, back to back")


# (label, loop, its real-time setup, the engine's threads kept off the loop's CPU)
PHASES = (("loaded, no control", "ours", False, False),
          ("loaded, control", "ours", True, False),
          ("loaded, control+affinity", "ours", True, True),
          ("loaded, naive sleep", "naive", False, False))
FULL = Workload(10.0, 1000, "default")
QUICK = Workload(2.0, 1000, "demo")


class EngineLoad:
    """The engine in a process of its own, and the cumulative tokens it reports."""

    def __init__(self, model: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LOAD, model],
                                     stdout=subprocess.PIPE, text=True)
        self.progress: list[tuple[float, int]] = []
        self._first = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, n = line.split()
            self.progress.append((float(t), int(n)))
            self._first.set()

    def warm(self, timeout: float = 600.0) -> None:
        if not self._first.wait(timeout):
            raise RuntimeError("the engine load did not start")

    def tokens_per_s(self, start: float, end: float) -> float:
        inside = [(t, n) for t, n in self.progress if start <= t <= end]
        if len(inside) < 2:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def probe(w: Workload, mode: str, rt: bool, cpu: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "aruntime.realtime.probe", "--seconds", str(w.seconds),
           "--period-us", str(w.period_us), "--mode", mode]
    cmd += ["--rt"] if rt else []
    cmd += ["--cpu", str(cpu)] if cpu is not None else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=True,
                          timeout=w.seconds * 10 + 60)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def restore_us(nbytes: int = 1 << 20, repeats: int = 1000) -> float:
    """The median time to restore a 1 MB state into its own arrays."""
    import numpy as np

    from aruntime.realtime.snapshot import Snapshot

    state = {"state": np.zeros(nbytes, np.uint8)}
    snap = Snapshot(state)
    snap.save(state)
    times = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        snap.restore(state)
        times.append(time.perf_counter_ns() - started)
    return statistics.median(times) / 1e3


def _phase(report: Report, label: str, result: dict[str, Any], tps: float | None) -> None:
    lat = result["lateness_us"]
    report.line(f"  {label:<22} lateness p50 {lat['p50']} us, p99 {lat['p99']} us, p99.9 "
                f"{lat['p999']} us, max {lat['max']} us; misses {result['misses']}"
                + (f"; engine {tps:.1f} tokens/s" if tps is not None else ""))
    report.reading(label.replace(" ", "_"), result)


def _loaded(w: Workload, report: Report, note: Any, cpu: int) -> dict[str, Any]:
    """The three loaded phases, the engine serving throughout; their results and tokens/s."""
    from aruntime.realtime.contention import keep_off

    load = EngineLoad(w.model)
    out: dict[str, Any] = {}
    try:
        load.warm()
        for label, mode, rt, control in PHASES:
            note(label)
            if control:
                out["engine_affinity"] = keep_off(load.proc.pid, [cpu])
            start = time.monotonic()
            result = probe(w, mode, rt, cpu if rt else None)
            tps = load.tokens_per_s(start, time.monotonic())
            if control:  # the engine back on every CPU: the next phase meets the same load
                keep_off(load.proc.pid, [])
            _phase(report, label, result, tps)
            out[label] = (result, tps)
    finally:
        load.stop()
    return out


def run_bench(w: Workload, *, json_file: Path | None = None, out: TextIO | None = None,
              smoke: bool = False) -> Outcome:
    from aruntime.bench import hardware
    from aruntime.bench.claim import ClaimSpec
    from aruntime.engine.default_model import checked_model
    from aruntime.engine.loader import load_checkpoint

    path = checked_model(w.model)
    model = f"{path.name}@{load_checkpoint(path).revision}"
    note = progress_notes()
    started = time.perf_counter()
    report = Report(out)
    hw = hardware.describe("cpu")
    cpu = max(os.sched_getaffinity(0))
    report.lines(["aruntime bench realtime: a loop's lateness idle and beside the engine, "
                  "with and without control, against a naive sleep loop",
                  f"hardware: {hardware.summary(hw)}", f"workload: {w.describe()}", ""])
    note("idle")
    idle = probe(w, "ours", True, cpu)
    _phase(report, "idle, control", idle, None)
    phases = _loaded(w, report, note, cpu)
    restored = restore_us()
    granted = {name: (applied, detail) for name, applied, detail in idle["settings"]}
    engine = phases["engine_affinity"]
    pinned, pinned_tps = phases["loaded, control+affinity"]
    report.line("  real-time settings: " + "; ".join(
        f"{n} {'applied' if a else 'refused'} ({d})" for n, (a, d) in granted.items())
        + f"; engine_affinity {'applied' if engine.applied else 'refused'} ({engine.detail})")
    report.line(f"  a 1 MB state restores in {restored:.1f} us (median of 1000)")
    ours, kept_tps = phases["loaded, control"]
    free, free_tps = phases["loaded, no control"]
    naive, _ = phases["loaded, naive sleep"]
    p999, naive_p999 = ours["lateness_us"]["p999"], naive["lateness_us"]["p999"]
    ratio = naive_p999 / max(p999, 0.1)
    kept = kept_tps / free_tps if free_tps else 0.0
    figures: dict[str, float | int | str] = {
        "p99_us_loaded": ours["lateness_us"]["p99"], "p999_us_loaded": p999,
        "naive_p999_us_loaded": naive_p999, "engine_throughput_kept": round(kept, 3),
        "p999_us_loaded_no_control": free["lateness_us"]["p999"],
        "p999_us_loaded_affinity": pinned["lateness_us"]["p999"],
        "engine_throughput_kept_affinity": round(pinned_tps / free_tps if free_tps else 0.0, 3),
        "p999_us_idle": idle["lateness_us"]["p999"], "misses_loaded": ours["misses"],
        "naive_misses_loaded": naive["misses"], "restore_1mb_us": round(restored, 1),
        "ratio": round(ratio, 2)}
    report.reading("metrics", figures)
    claim = ClaimSpec(
        statement=(f"A {1e6 / w.period_us:.0f} Hz loop beside the engine under load, with "
                   f"control, is {p999} us late at p99.9 ({ours['lateness_us']['p99']} us at "
                   f"p99) against {naive_p999} us for a naive sleep loop ({ratio:.0f}x); the "
                   f"engine keeps {kept:.0%} of its tokens/s"),
        metric="loop_lateness_p999_us_loaded", value=p999, unit="us",
        direction="lower-is-better", baseline_name="a naive time.sleep loop under the same load",
        baseline_value=naive_p999, metrics=figures, model=model, hardware=hardware.summary(hw),
        workload=w.describe(), precision="fp32", context=64, concurrency=8, seed=0,
        duration_s=round(time.perf_counter() - started, 2), percentile="p99.9")
    return report.finish(f"loop p99.9 lateness under load, naive / ours: {ratio:.1f}", claim,
                         json_file, smoke=smoke)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="2 s phases on the demo model")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    run_bench(QUICK if args.quick else FULL, json_file=json_path(args), smoke=args.quick)
    return 0
