"""`aruntime bench parallel` at small size: one rank, two tensor-parallel ranks and two
pipeline stages (whole steps, and in micro-batches) on the tiny model, the same greedy
tokens, each step split into compute and communication, bytes per token, ratio last."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from aruntime.bench.parallel import Workload, run_bench
from aruntime.cli import main


def test_the_bench_splits_each_step_and_reports_the_ratio_last(tiny_model_dir: Path,
                                                              tmp_path: Path) -> None:
    out = io.StringIO()
    outcome = run_bench(Workload(str(tiny_model_dir), 2, 2, 2, 12, 3, 1),
                        json_file=tmp_path / "claim.json", out=out)
    lines = out.getvalue().strip().splitlines()
    assert lines[-1].startswith("tokens/s on 2 ranks / on 1: ")
    assert any("greedy tokens equal in every configuration" in line for line in lines)
    m = outcome.record["metrics"]
    assert m["comm_ms_tpn"] > 0 and m["compute_ms_tpn"] > 0 and m["comm_ms_ppm"] > 0
    # two all-reduces a layer of the hidden state (64 floats a token) at the least
    assert m["comm_bytes_per_token"] >= 2 * 2 * 64 * 4
    # a stage's hidden states to the next: 64 floats a token, at the least
    assert m["pp_comm_bytes_per_token"] >= 64 * 4
    assert m["micro_batch_gain"] > 0 and m["tokens_per_s_ppm_whole_steps"] > 0
    assert (tmp_path / "claim.json").is_file()


def test_a_model_the_ranks_cannot_share_is_one_line(tiny_model_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "parallel", "--quick", "--model", str(tiny_model_dir),
                 "--tensor-parallel", "3"]) == 2
    assert "3 ranks do not split their 4 attention heads" in capsys.readouterr().err
