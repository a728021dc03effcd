"""`aruntime bench realtime [--quick] [--json FILE]`: a 1 kHz loop (realtime/probe.py, a process
of its own) idle, then while the LLM engine serves a batch load in another process — without
control; with control (the loop's SCHED_FIFO, mlockall and frozen GC, pinned to the last CPU);
with control and the engine yielding between steps while the loop runs short of slack (its
board, engine/loop_board.py); with control and the engine's threads kept off the loop's CPU
(the engine then runs as many threads as the CPUs it is left) — against a naive `time.sleep`
loop under the same load, in one run: lateness p50/p99/p99.9/max, misses, the engine's tokens/s
in each phase, and a 1 MB state restore's time. Ratio last: naive p99.9 / ours p99.9 under
load (with the loop's control; the other forms of control are reported beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aruntime.bench.report import Outcome, Report, add_json_argument, json_path, progress_notes
from aruntime.realtime.stats import Lateness

# the engine's load: 8 greedy requests in flight, each finished one replaced; after each step,
# one line of the cumulative tokens and the times the engine yielded to the loop
LOAD = """
import sys, time
from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import checked_model
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams
engine = LLMEngine(EngineConfig(model=str(checked_model(sys.argv[1])), loop_board=sys.argv[2]))
params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
done, k = 0, 0
while True:
    while len(engine.seqs) < 8:
        engine.add_request(str(k), [(7 * k + j) % 200 + 10 for j in range(48)], params)
        k += 1
    done += sum(len(o.new_token_ids) for o in engine.step())
    print(time.monotonic(), done, engine.gate.yields, flush=True)
"""


@dataclass(frozen=True)
class Workload:
    seconds: float  # each phase, in each round
    period_us: int
    model: str
    rounds: int = 1  # the phases in turn, this many times; the rounds' medians reported

    def describe(self) -> str:
        # the model by name: a path can be long (the claim's `model` names it exactly)
        return (f"a {1e6 / self.period_us:.0f} Hz loop, {self.rounds} rounds of the phases in "
                f"turn, {self.seconds:g} s a phase a round; the engine "
                f"({Path(self.model).name}) keeping 8 greedy requests of 48 prompt tokens and "
                f"16 new tokens in flight; each phase's percentiles the median over its rounds")


@dataclass(frozen=True)
class Phase:
    label: str
    loop: str  # ours | naive
    rt: bool = False  # the loop's real-time setup
    yields: bool = False  # the engine yields to the loop's board
    affinity: bool = False  # the engine's threads kept off the loop's CPU
    key: str = ""  # its figures' suffix (the claimed phase has none)


PHASES = (Phase("loaded, no control", "ours", key="_no_control"),
          Phase("loaded, yield only", "ours", yields=True, key="_yield_only"),
          Phase("loaded, control", "ours", rt=True),
          Phase("loaded, control+yield", "ours", rt=True, yields=True, key="_yield"),
          Phase("loaded, control+affinity", "ours", rt=True, affinity=True, key="_affinity"),
          Phase("loaded, naive sleep", "naive", key="_naive"))
FULL = Workload(2.0, 1000, "default", rounds=5)
QUICK = Workload(2.0, 1000, "demo")


class EngineLoad:
    """The engine in a process of its own, and the cumulative tokens it reports."""

    def __init__(self, model: str, board: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LOAD, model, str(board)],
                                     stdout=subprocess.PIPE, text=True)
        self.progress: list[tuple[float, int, int]] = []
        self._first = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, n, y = line.split()
            self.progress.append((float(t), int(n), int(y)))
            self._first.set()

    def warm(self, timeout: float = 600.0) -> None:
        if not self._first.wait(timeout):
            raise RuntimeError("the engine load did not start")

    def between(self, start: float, end: float) -> tuple[float, int, int]:
        """Seconds, tokens and yields between the first and the last step inside a window."""
        inside = [p for p in self.progress if start <= p[0] <= end]
        if len(inside) < 2:
            return 0.0, 0, 0
        (t0, n0, y0), (t1, n1, y1) = inside[0], inside[-1]
        return t1 - t0, n1 - n0, y1 - y0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Pooled:
    """One phase over its rounds: every lateness sample, each round's percentiles, and the
    engine's tokens and time. Its figures are the rounds' medians (a burst of the machine's
    own stalls, which no setting here controls, moves one round's tail, not the median); the
    pooled percentiles go beside them."""

    lateness: Lateness = field(default_factory=Lateness)
    rounds: list[dict[str, float | None]] = field(default_factory=list)
    round_tps: list[float] = field(default_factory=list)  # the engine's, each round
    misses: int = 0
    seconds: float = 0.0
    tokens: int = 0
    yields: int = 0

    def add(self, result: dict[str, Any], engine: tuple[float, int, int]) -> None:
        self.lateness.samples_ns.extend(result["lateness_ns"])
        self.rounds.append(result["lateness_us"])
        self.misses += result["misses"]
        seconds, tokens, yields = engine
        self.round_tps.append(tokens / seconds if seconds else 0.0)
        self.seconds += seconds
        self.tokens += tokens
        self.yields += yields

    def result(self) -> dict[str, Any]:
        median = {q: statistics.median(r[q] or 0.0 for r in self.rounds)
                  for q in ("p50", "p99", "p999", "max")}
        return {"lateness_us": median, "pooled_lateness_us": self.lateness.summary_us(),
                "misses": self.misses, "steps": len(self.lateness.samples_ns),
                "rounds": len(self.rounds)}

    def engine(self) -> tuple[float, int]:
        return (self.tokens / self.seconds if self.seconds else 0.0), self.yields


def probe(w: Workload, mode: str, rt: bool, cpu: int | None,
          board: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "aruntime.realtime.probe", "--seconds", str(w.seconds),
           "--period-us", str(w.period_us), "--mode", mode]
    cmd += ["--rt"] if rt else []
    cmd += ["--cpu", str(cpu)] if cpu is not None else []
    # the engine yields while a step ends with under 3/4 of its period left (a quarter late)
    floor = ["--floor-us", str(w.period_us * 3 // 4)]
    cmd += ["--board", str(board), *floor] if board is not None else []
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


def _phase(report: Report, label: str, result: dict[str, Any],
           engine: tuple[float, int] | None) -> None:
    lat = result["lateness_us"]
    report.line(f"  {label:<24} lateness p50 {lat['p50']} us, p99 {lat['p99']} us, p99.9 "
                f"{lat['p999']} us, max {lat['max']} us; misses {result['misses']}"
                + (f" (pooled p99.9 {result['pooled_lateness_us']['p999']} us)"
                   if "pooled_lateness_us" in result else "")
                + (f"; engine {engine[0]:.1f} tokens/s, {engine[1]} yields" if engine else ""))
    report.reading(label.replace(" ", "_"), {k: v for k, v in result.items()
                                              if k != "lateness_ns"})


def _loaded(w: Workload, report: Report, note: Any, cpu: int, board: Path) -> dict[str, Any]:
    """The loaded phases in turn, round after round, the engine serving throughout; each
    phase's pooled results and tokens/s (a burst of the machine's noise falls on every phase)."""
    from aruntime.realtime.contention import keep_off

    load = EngineLoad(w.model, board)
    pooled = {ph.label: Pooled() for ph in PHASES}
    out: dict[str, Any] = {}
    try:
        load.warm()
        for r in range(w.rounds):
            for ph in PHASES:
                note(f"{ph.label} (round {r + 1} of {w.rounds})")
                if ph.affinity:
                    out["engine_affinity"] = keep_off(load.proc.pid, [cpu])
                start = time.monotonic()
                result = probe(w, ph.loop, ph.rt, cpu if ph.rt else None,
                               board if ph.yields else None)
                pooled[ph.label].add(result, load.between(start, time.monotonic()))
                if ph.affinity:  # the engine back on every CPU: the next phase meets the load
                    keep_off(load.proc.pid, [])
    finally:
        load.stop()
    for ph in PHASES:
        result, engine = pooled[ph.label].result(), pooled[ph.label].engine()
        _phase(report, ph.label, result, engine)
        out[ph.label] = (result, engine, pooled[ph.label].round_tps)
    return out


def _figures(phases: dict[str, Any], idle: dict[str, Any],
             restored: float) -> dict[str, float | int | str]:
    """The claim's metrics: p99.9 lateness, misses, the engine's tokens/s kept and its yields
    in each loaded phase; the claimed phase's p99 beside. The tokens/s kept is the median over
    the rounds of each round's ratio to no control's in the same round: the phases of a round
    run back to back, so the pair meets the same state of a noisy machine."""
    free = phases["loaded, no control"][2]
    out: dict[str, float | int | str] = {}
    for ph in PHASES:
        result, (_, yields), tps = phases[ph.label]
        kept = statistics.median(a / b if b else 0.0 for a, b in zip(tps, free, strict=True))
        out[f"p999_us_loaded{ph.key}"] = result["lateness_us"]["p999"]
        out[f"pooled_p999_us_loaded{ph.key}"] = result["pooled_lateness_us"]["p999"]
        out[f"misses_loaded{ph.key}"] = result["misses"]
        out[f"engine_throughput_kept{ph.key}"] = round(kept, 3)
        out[f"engine_yields{ph.key}"] = yields
    ours = phases["loaded, control"][0]["lateness_us"]
    naive_p999 = float(out.pop("p999_us_loaded_naive"))
    out.update(naive_p999_us_loaded=naive_p999, naive_misses_loaded=out.pop("misses_loaded_naive"),
               p99_us_loaded=ours["p99"], p999_us_idle=idle["lateness_us"]["p999"],
               restore_1mb_us=round(restored, 1),
               ratio=round(naive_p999 / max(ours["p999"], 0.1), 2))
    del out["engine_throughput_kept_no_control"]  # 1 by definition
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
    with tempfile.TemporaryDirectory(prefix="aruntime-rt-") as tmp:
        phases = _loaded(w, report, note, cpu, Path(tmp) / "loop.board")
    restored = restore_us()
    granted = {name: (applied, detail) for name, applied, detail in idle["settings"]}
    engine = phases["engine_affinity"]
    report.line("  real-time settings: " + "; ".join(
        f"{n} {'applied' if a else 'refused'} ({d})" for n, (a, d) in granted.items())
        + f"; engine_affinity {'applied' if engine.applied else 'refused'} ({engine.detail})")
    report.line(f"  a 1 MB state restores in {restored:.1f} us (median of 1000)")
    figures = _figures(phases, idle, restored)
    ours = phases["loaded, control"][0]
    p999, naive_p999, ratio, kept = (float(figures[k]) for k in (
        "p999_us_loaded", "naive_p999_us_loaded", "ratio", "engine_throughput_kept"))
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
