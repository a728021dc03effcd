"""`bench policy`'s figures: the report (the ratio of uncached p99 to the re-parse p99 last),
the raw log of every sample, and the claim record."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TextIO

from aruntime.bench import hardware
from aruntime.bench import policy_workload as workload
from aruntime.bench.claim import ClaimSpec
from aruntime.bench.policy import DECISIONS_PER_REQUEST, Measured, us
from aruntime.bench.report import Outcome, Report

CACHED_P99_US = 20.0  # the bars
REPARSE_FACTOR = 5.0
TTFT_SHARE = 0.02


def metrics(m: Measured) -> dict[str, float | int | str]:
    s = m.samples
    ttft_p50 = statistics.median(s.ttft)
    share = DECISIONS_PER_REQUEST * us(s.uncached, "p50") / 1e6 / ttft_p50
    return {
        "cached_p50_us": us(s.cached, "p50"), "cached_p99_us": us(s.cached, "p99"),
        "uncached_p50_us": us(s.uncached, "p50"), "uncached_p99_us": us(s.uncached, "p99"),
        "reparse_p50_us": us(s.reparse, "p50"), "reparse_p99_us": us(s.reparse, "p99"),
        "ttft_share": round(share, 5), "ttft_p50_ms": round(ttft_p50 * 1e3, 2),
        "decisions_per_request": DECISIONS_PER_REQUEST, "rules": workload.RULES,
        "uncached_samples": len(s.uncached), "cached_samples": len(s.cached),
        "reparse_samples": len(s.reparse), "ttft_samples": len(s.ttft),
        "cached_hits": s.hits, "answers_agree": s.agree, "uncached_allowed": s.allowed}


def _facts(m: Measured, f: dict[str, float | int | str]) -> list[tuple[str, str]]:
    s = m.samples
    cached_ok = float(f["cached_p99_us"]) <= CACHED_P99_US
    factor = float(f["reparse_p99_us"]) / float(f["uncached_p99_us"])
    share = float(f["ttft_share"])
    return [
        ("TTFT p50 (demo model, short prompt)", f"{f['ttft_p50_ms']} ms over {len(s.ttft)} "
                                                f"probes of up to {m.prompt_tokens} tokens"),
        (f"decisions' share of TTFT ({DECISIONS_PER_REQUEST} uncached)", f"{share:.2%}"),
        ("cached decisions that hit", f"{s.hits}/{len(s.cached)}"),
        ("answers equal to re-parsed cedarpy's", f"{s.agree}/{len(s.reparse)}"),
        (f"acceptance (cached p99 <= {CACHED_P99_US:g} us)", "pass" if cached_ok else "FAIL"),
        (f"acceptance (uncached p99 >= {REPARSE_FACTOR:g}x below re-parse)",
         f"{'pass' if factor >= REPARSE_FACTOR else 'FAIL'} ({factor:.1f}x)"),
        (f"acceptance (decisions <= {TTFT_SHARE:.0%} of TTFT)",
         "pass" if share <= TTFT_SHARE else "FAIL"),
        ("duration", f"{m.duration_s:.1f} s")]


def outcome(m: Measured, json_path: Path | None, out: TextIO | None) -> Outcome:
    from aruntime.engine.default_model import served_name

    s, f = m.samples, metrics(m)
    hw = hardware.describe("cpu")
    report = Report(out)
    report.lines([f"aruntime bench policy: {workload.RULES}-rule Cedar policy (cedarpy "
                  f"{_cedarpy_version()})", f"hardware: {hardware.summary(hw)}",
                  f"workload: {m.workload.describe()}", "",
                  f"{'per decision':<34}{'p50 us':>10}{'p99 us':>10}{'samples':>9}"])
    for name, key, values in (("cached", "cached", s.cached),
                              ("uncached (pre-parsed policy)", "uncached", s.uncached),
                              ("re-parse the policy per call", "reparse", s.reparse)):
        report.line(f"{name:<34}{f[f'{key}_p50_us']:>10}{f[f'{key}_p99_us']:>10}"
                    f"{len(values):>9}")
    report.facts(_facts(m, f), 52)
    for part in ("uncached", "cached", "reparse", "ttft"):
        report.reading(f"{part}_us", [round(x * 1e6, 1) for x in getattr(s, part)])
    report.reading("hardware", hw)
    report.reading("metrics", f)
    value, base = float(f["uncached_p99_us"]), float(f["reparse_p99_us"])
    claim = ClaimSpec(
        statement=(f"A decision on a pre-parsed {workload.RULES}-rule Cedar policy takes "
                   f"{value:.0f} us at p99 uncached ({f['cached_p99_us']} us cached), "
                   f"{base / value:.1f}x below re-parsing the policy per call ({base:.0f} us); "
                   f"{DECISIONS_PER_REQUEST} decisions are {float(f['ttft_share']):.2%} of a "
                   "short request's TTFT on the demo model"),
        metric="policy_decision_latency_uncached", value=value, unit="us",
        direction="lower-is-better", baseline_name="cedarpy, policy text re-parsed per call",
        baseline_value=base, metrics=f, model=f"{served_name(m.model_dir)}@{m.revision}",
        hardware=hardware.summary(hw), workload=m.workload.describe(), precision="fp32",
        context=m.prompt_tokens, concurrency=1, seed=1, duration_s=round(m.duration_s, 2),
        percentile="p99")
    return report.finish(f"uncached decision p99 / re-parse p99: {value / base:.3f} "
                         f"({base / value:.1f}x lower)", claim, json_path)


def _cedarpy_version() -> str:
    from importlib.metadata import version

    return version("cedarpy")
