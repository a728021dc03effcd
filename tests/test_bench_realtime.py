"""`aruntime bench realtime` at small size: the loop idle, then beside the engine in another
process without control, with the engine yielding, with control (alone, with the engine
yielding, with the engine kept off the loop's CPU) and as a naive sleep loop; the real-time
settings said; a 1 MB restore timed; the ratio last and the claim's metrics as the issue
names them."""

from __future__ import annotations

import io
from pathlib import Path

from aruntime.bench.realtime import Workload, run_bench


def test_the_bench_reports_each_phase_and_the_ratio_last(tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    out = io.StringIO()
    outcome = run_bench(Workload(0.5, 1000, str(tiny_model_dir)),
                        json_file=tmp_path / "claim.json", out=out)
    lines = out.getvalue().strip().splitlines()
    assert lines[-1].startswith("loop p99.9 lateness under load, naive / ours: ")
    for phase in ("idle, control", "loaded, no control", "loaded, yield only",
                  "loaded, control", "loaded, control+yield", "loaded, control+affinity",
                  "loaded, naive sleep"):
        assert any(line.strip().startswith(phase) for line in lines), phase
    assert any("real-time settings: sched_fifo" in line for line in lines)
    metrics = outcome.record["metrics"]
    for name in ("p99_us_loaded", "p999_us_loaded", "naive_p999_us_loaded",
                 "engine_throughput_kept", "restore_1mb_us", "engine_yields_yield",
                 "engine_throughput_kept_affinity"):
        assert isinstance(metrics[name], int | float), name
    assert metrics["engine_throughput_kept"] > 0  # the engine ran through every phase
    assert (tmp_path / "claim.json").is_file()
