"""`aruntime bench backends` at tiny size: every compiled backend is timed per phase and
bucket, the engine runs end to end with auto and eager (their outputs compared inside), the
ratio comes last and the claim record carries `backends_passing_gate`."""

from __future__ import annotations

import io
from pathlib import Path

from aruntime.bench.backends import Workload, run_bench

TINY = Workload({"decode": (4,), "prefill": (32,)}, (16,), 1, 2, 20, 4, 1)


def test_the_bench_reports_each_backend_and_the_auto_ratio_last(tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    out = io.StringIO()
    outcome = run_bench(TINY, json_file=tmp_path / "claim.json", out=out,
                        models=(("tiny", tiny_model_dir),))
    lines = out.getvalue().strip().splitlines()
    assert lines[-1].startswith("engine tokens/s, auto / eager: ")
    metrics = outcome.record["metrics"]
    assert metrics["backends_passing_gate"] >= 3
    auto, eager = metrics["auto_tokens_per_s"], metrics["eager_tokens_per_s"]
    assert abs(metrics["ratio"] - auto / eager) < 2e-3 and lines[-1].endswith(
        f"{metrics['ratio']:.3f}")
    assert any("tiny decode/4" in line and "onnxruntime" in line for line in lines)
    assert (tmp_path / "claim.json").is_file() and (tmp_path / "claim.json.log").is_file()
