"""`bench engine`'s figures from what one run measured, and their report, raw log and claim."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from aruntime.bench import hardware
from aruntime.bench.claim import ClaimSpec
from aruntime.bench.engine_systems import SystemRun
from aruntime.bench.engine_workload import Request, Workload
from aruntime.bench.model_costs import request_flops
from aruntime.bench.report import Outcome, Report
from aruntime.bench.stats import median_of
from aruntime.engine.config import ModelConfig

Metrics = dict[str, float | int | str]


@dataclass(slots=True)
class Measured:
    """Everything one run measured, each system's every round included."""

    model_dir: Path
    workload: Workload
    model: ModelConfig
    device: str
    matmul_n: int
    requests: list[Request]
    probes: list[list[int]]
    revision: str  # the checkpoint's, as the engine digested it
    rounds: list[tuple[SystemRun, SystemRun]]  # (aruntime, transformers), in the order run
    ttft: dict[bool, list[tuple[float, int]]]  # prefix caching on/off: (seconds, cached tokens)
    rooflines: list[float]  # GFLOP/s, before and after the TTFT probes
    rss: dict[str, float]  # peak RSS (MB) at the start and after each of ARuntime's phases
    duration_s: float

    @property
    def served_name(self) -> str:
        from aruntime.engine.default_model import served_name

        return served_name(self.model_dir)

    @property
    def model_name(self) -> str:
        return f"{self.served_name}@{self.revision}"


@dataclass(frozen=True, slots=True)
class Figures:
    measured: Measured
    ours: SystemRun  # each system's median round
    base: SystemRun
    roofline: float  # the better of the readings: the machine is shared
    cached_ms: float  # TTFT medians
    uncached_ms: float
    hits: int  # prompt tokens the cached probes found cached, the fewest
    agree: int  # requests whose greedy outputs are the baseline's

    @classmethod
    def of(cls, m: Measured) -> Figures:
        # The machine is shared and noisy: the median round of each system counts (the lower
        # median when the count is even), and every round is in the raw log.
        ours = median_of([o for o, _ in m.rounds], lambda r: r.wall_s)
        base = median_of([b for _, b in m.rounds], lambda r: r.wall_s)
        return cls(m, ours, base, max(m.rooflines),
                   statistics.median(t for t, _ in m.ttft[True]) * 1e3,
                   statistics.median(t for t, _ in m.ttft[False]) * 1e3,
                   min(c for _, c in m.ttft[True]),
                   sum(ours.outputs[r.id] == base.outputs[r.id] for r in m.requests))

    @property
    def value(self) -> float:
        return round(self.ours.tok_s, 2)

    @property
    def baseline(self) -> float:
        return round(self.base.tok_s, 2)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline  # exactly as the claim record computes it

    def mfu(self, run: SystemRun) -> float:
        m = self.measured
        flops = sum(request_flops(m.model, len(r.prompt), r.max_tokens, run.cached.get(r.id, 0))
                    for r in m.requests)
        return flops / run.wall_s / 1e9 / self.roofline


def metrics(f: Figures) -> Metrics:
    ours, base, n = f.ours, f.base, len(f.measured.requests)
    return {
        "baseline_tok_s": f.baseline,
        "ttft_cached_speedup": round(f.uncached_ms / f.cached_ms, 3),
        "ttft_cached_ms": round(f.cached_ms, 2),
        "ttft_uncached_ms": round(f.uncached_ms, 2),
        "ttft_cached_prefix_hit_tokens": f.hits,
        "mfu": round(f.mfu(ours), 4),
        "baseline_mfu": round(f.mfu(base), 4),
        "matmul_gflops": round(f.roofline, 1),
        "peak_rss_mb": round(f.measured.rss["throughput_phase"], 1),
        "wall_s": round(ours.wall_s, 3),
        "baseline_wall_s": round(base.wall_s, 3),
        "cpu_s": round(ours.cpu_s, 3),
        "baseline_cpu_s": round(base.cpu_s, 3),
        "output_tokens": ours.output_tokens,
        "prefill_tokens_computed": ours.prefill_tokens,
        "baseline_prefill_tokens_computed": base.prefill_tokens,
        "preempted": ours.extra["preempted"],
        "ttft_p50_s": round(ours.extra["ttft_p50_s"], 3),
        "e2e_p50_s": round(ours.extra["e2e_p50_s"], 3),
        "greedy_agreement": round(f.agree / n, 4),
        "rounds": len(f.measured.rounds),
    }


def table(f: Figures) -> list[str]:
    lines = [f"{'system':<44}{'wall s':>8}{'cpu s':>8}{'out tokens':>12}{'out tok/s':>11}"
             f"{'prefill computed':>18}{'MFU':>7}"]
    for run in (f.ours, f.base):
        lines.append(f"{run.name:<44}{run.wall_s:>8.2f}{run.cpu_s:>8.2f}{run.output_tokens:>12}"
                     f"{run.tok_s:>11.1f}{run.prefill_tokens:>18}{f.mfu(run):>7.1%}")
    return lines


def facts(f: Figures) -> list[tuple[str, str]]:
    m, w = f.measured, f.measured.workload
    per_round = [" / ".join(f"{r.wall_s:.1f}" for r in runs)
                 for runs in zip(*m.rounds, strict=False)]
    return [
        ("wall s per round (median counts)",
         f"aruntime {per_round[0]}; transformers {per_round[1]}"),
        (f"TTFT, {w.prefix_len}-token prefix cached",
         f"{f.cached_ms:.1f} ms (median of {len(m.ttft[True])}; {f.hits} prompt tokens from "
         "the cache)"),
        ("TTFT, prefix caching off", f"{f.uncached_ms:.1f} ms (median of {len(m.ttft[False])})"),
        ("TTFT cached speedup", f"{f.uncached_ms / f.cached_ms:.2f}x"),
        (f"roofline, fp32 {m.matmul_n}x{m.matmul_n} matmul", f"{f.roofline:.1f} GFLOP/s"),
        ("aruntime peak RSS", f"{m.rss['throughput_phase']:.0f} MB (its throughput phase; the "
         "baseline loads later)"),
        ("aruntime preempted sequences", str(f.ours.extra["preempted"])),
        ("greedy outputs equal to the baseline's", f"{f.agree}/{len(m.requests)} requests"),
        ("duration", f"{m.duration_s:.1f} s"),
    ]


def log_rounds(report: Report, f: Figures) -> None:
    """Every round of both systems, the median ones marked, each with its per-request rows."""
    for i, pair in enumerate(f.measured.rounds, 1):
        for run in pair:
            report.row(f"# round {i}, {run.name}: wall {run.wall_s:.3f} s, cpu {run.cpu_s:.3f} "
                       f"s, {run.output_tokens} tokens, {run.tok_s:.2f} tok/s"
                       + (" (median)" if run is f.ours or run is f.base else ""))
            report.rows(map(json.dumps, run.rows))


def outcome(m: Measured, json_path: Path | None, out: TextIO | None) -> Outcome:
    """The report (the table, the other figures, the ratio last), the raw log and the claim."""
    f = Figures.of(m)
    figures = metrics(f)
    hw = hardware.describe(m.device)
    report = Report(out)
    report.lines([f"aruntime bench engine: {m.model_name}", f"hardware: {hardware.summary(hw)}",
                  f"workload: {m.workload.describe()}", "", *table(f)])
    report.facts(facts(f), 40)
    log_rounds(report, f)
    report.reading("ttft_s", {"cached": m.ttft[True], "uncached": m.ttft[False]})
    report.reading("matmul_gflops", m.rooflines)
    report.reading("peak_rss_mb", m.rss)
    report.reading("hardware", hw)
    report.reading("metrics", figures)
    claim = ClaimSpec(
        statement=(f"ARuntime's offline output throughput is {f.ratio:.2f}x that of "
                   f"{f.base.name} on the same {m.served_name} weights, measured in the same "
                   "run"),
        metric="output_throughput", value=f.value, unit="tok/s", direction="higher-is-better",
        baseline_name=f.base.name, baseline_value=f.baseline, metrics=figures,
        model=m.model_name, hardware=hardware.summary(hw), workload=m.workload.describe(),
        precision="fp32",
        context=max(max(len(r.prompt) + r.max_tokens for r in m.requests), len(m.probes[0]) + 1),
        concurrency=len(m.requests), seed=m.workload.seed, duration_s=round(m.duration_s, 2),
        percentile="p50")  # the median round of each system counts
    return report.finish(f"throughput ratio vs transformers: {f.ratio:.2f}", claim, json_path)
