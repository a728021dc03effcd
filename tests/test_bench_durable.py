"""`aruntime bench durable` machinery on a tiny workload: fields, not speed."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from aruntime.bench.claim import sha256_text
from aruntime.bench.durable import run_bench
from aruntime.bench.durable_workload import DurableWorkload
from aruntime.cli import main

TINY = DurableWorkload(invocations=8, rounds=1, warmup=2, recovery_steps=200, kill_after=10)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str, Path]:
    tmp = tmp_path_factory.mktemp("bench-durable")
    out = io.StringIO()
    result = run_bench(TINY, workdir=tmp / "work", json_path=tmp / "durable.json", out=out,
                       progress=io.StringIO())
    return result, out.getvalue(), tmp / "durable.json"


def test_the_ratio_is_the_last_line_and_the_record_agrees(bench: tuple[Any, str, Path]) -> None:
    result, printed, _ = bench
    assert printed == result.report
    last = printed.strip().splitlines()[-1]
    match = re.fullmatch(r"step overhead ratio langgraph-sqlite / aruntime: (\d+\.\d\d)", last)
    assert match, last
    record = result.record
    assert record["ratio"] == pytest.approx(record["value"] / record["baseline"]["value"])
    assert float(match[1]) == pytest.approx(1 / record["ratio"], abs=0.006)


def test_the_claim_record_names_its_figures(bench: tuple[Any, str, Path]) -> None:
    result, _, path = bench
    record = json.loads(path.read_text())
    assert record == result.record
    assert (record["metric"], record["unit"], record["percentile"]) == (
        "step_overhead_p50", "ms", "p50")
    assert "SqliteSaver" in record["baseline"]["name"]
    metrics = record["metrics"]
    for key in ("step_p50_ms", "step_p99_ms", "recovery_s", "steps_per_s",
                "baseline_step_p50_ms", "baseline_step_p99_ms", "baseline_recovery_s",
                "baseline_async_step_p50_ms", "recovery_first_step_s", "sqlite_commit_p50_ms"):
        assert isinstance(metrics[key], float), key
    assert record["value"] == metrics["step_p50_ms"]
    assert record["baseline"]["value"] == metrics["baseline_step_p50_ms"]
    assert (metrics["sqlite_journal_mode"], metrics["sqlite_synchronous"]) == ("WAL", "FULL")
    assert metrics["rounds"] == 1 and metrics["invocations_per_round"] == TINY.invocations
    assert "synchronous=FULL" in record["workload"]


def test_the_raw_log_is_the_one_the_record_names(bench: tuple[Any, str, Path]) -> None:
    result, printed, path = bench
    log = Path(str(path) + ".log").read_text()
    assert log == result.raw_log and log.endswith(printed)
    assert sha256_text(log) == result.record["raw_log_sha256"]
    times = [json.loads(line) for line in log.splitlines() if line.startswith('{"round"')]
    runs = [t for t in times if "durable_ms" in t]
    assert {t["system"] for t in runs} == {"aruntime", "langgraph", "langgraph_async"}
    assert all(len(t["durable_ms"]) == len(t["bare_ms"]) == TINY.invocations for t in runs)


def test_both_recoveries_were_killed_mid_run_and_completed(bench: tuple[Any, str, Path]) -> None:
    result, _, _ = bench
    recoveries = result.rounds[0].recovery
    assert set(recoveries) == {"aruntime", "langgraph"}
    for r in recoveries.values():  # run_bench checked each resumed run's result and length
        assert TINY.kill_after <= r.killed_at < TINY.recovery_steps
        assert r.recovery_s > 0
    assert result.record["metrics"]["recovery_killed_at_step"] == recoveries["aruntime"].killed_at


def test_the_cli_refuses_a_directory_for_json(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "durable", "--quick", "--json", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
