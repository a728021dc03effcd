"""`aruntime bench engine` end to end on the tiny demo checkpoint, through the command line: the
claim record and the report are complete and consistent. No speed is asserted here; benchmarks
show speed, tests do not."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from pathlib import Path

import pytest

from aruntime.bench import engine as bench_engine
from aruntime.cli import main

CLAIM_FIELDS = {
    "schema", "label", "statement", "metric", "value", "unit", "direction", "baseline", "ratio",
    "metrics", "model", "hardware", "runtime_version", "workload", "precision", "context",
    "concurrency", "seed", "duration_s", "percentile", "measured_at", "raw_log_sha256",
}
METRICS = {
    "ttft_cached_speedup", "mfu", "peak_rss_mb", "ttft_cached_ms", "ttft_uncached_ms",
    "matmul_gflops", "baseline_tok_s",
}


def small_bench(model_dir: Path, num_requests: int, json_path: Path) -> tuple[dict, str]:
    """`aruntime bench engine --quick` with the quick workload shrunk to fit a test; returns the
    claim record it wrote and what it printed."""
    workload = bench_engine.Workload(num_requests=num_requests, prompt_len=(4, 40),
                                     output_len=(2, 9), prefix_len=64, suffix_len=16,
                                     ttft_repeats=2, rounds=2)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(io.StringIO()):
        mp.setattr(bench_engine, "QUICK", workload)
        status = main(["bench", "engine", "--quick", "--model", str(model_dir),
                       "--json", str(json_path), "--seed", "3"])
    assert status == 0
    return json.loads(json_path.read_text()), out.getvalue()


@pytest.fixture(scope="module")
def bench(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    path = tmp_path_factory.mktemp("bench") / "claim.json"
    record, report = small_bench(tiny_model_dir, 10, path)
    return record, report, path


def test_claim_record_is_complete(bench: tuple[dict, str, Path]) -> None:
    record, _, _ = bench
    assert set(record) == CLAIM_FIELDS
    assert set(record["metrics"]) >= METRICS
    assert record["schema"] == "aruntime.claim/v1"
    assert record["label"] == "production-implementation"
    assert record["metric"] == "output_throughput" and record["unit"] == "tok/s"
    assert record["baseline"]["name"].startswith("transformers ")
    assert record["precision"] == "fp32"
    assert record["concurrency"] == 10 and record["seed"] == 3
    assert record["measured_at"].endswith("Z")
    assert "@sha256:" in record["model"]  # name@revision digest


def test_the_measurements_measured_what_they_claim(bench: tuple[dict, str, Path]) -> None:
    metrics = bench[0]["metrics"]
    assert metrics["ttft_cached_prefix_hit_tokens"] == 64  # the cached probe did hit the cache
    assert metrics["preempted"] == 0  # the throughput run measured batching, not preemption
    # Same weights, greedy: the two systems did the same work.
    assert metrics["greedy_agreement"] == 1.0


def test_ratio_is_value_over_baseline_and_printed_last(bench: tuple[dict, str, Path]) -> None:
    record, report, _ = bench
    assert record["ratio"] == pytest.approx(record["value"] / record["baseline"]["value"])
    last = report.rstrip("\n").splitlines()[-1]
    match = re.fullmatch(r"throughput ratio vs transformers: (\d+\.\d\d)", last)
    assert match, last
    assert match.group(1) == f"{record['ratio']:.2f}"


def test_raw_log_digest_matches_the_written_log(bench: tuple[dict, str, Path]) -> None:
    record, report, path = bench
    raw = Path(str(path) + ".log").read_text(encoding="utf-8")
    assert hashlib.sha256(raw.encode("utf-8")).hexdigest() == record["raw_log_sha256"]
    assert raw.endswith(report)  # what was printed is part of what the digest covers
    assert raw.count('"id": "req-') == 2 * 2 * 10  # a row per request, system and round


def test_cli_rejects_a_model_dir_without_config(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "engine", "--quick", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aruntime: error: --model")


def test_quick_measures_the_same_workload_with_fewer_repeats() -> None:
    """A quick run is less precise, never another measurement: only the repeat counts differ
    (it once ran 24 requests instead of 64, and its ratio told another story)."""
    from dataclasses import replace

    quick, full = bench_engine.QUICK, bench_engine.FULL
    assert quick.rounds < full.rounds and quick.ttft_repeats < full.ttft_repeats
    assert replace(quick, rounds=full.rounds, ttft_repeats=full.ttft_repeats) == full
