"""The cache benchmark's machinery on the tiny model and a small trace it writes itself: the
slice keeps whole conversations, the ideal hit rate is computed from the prompts, the tiered
set-up reaches it, and the claim record carries every field. No speed is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aruntime.bench.cache import run_bench
from aruntime.bench.cache_workload import (
    CacheWorkload,
    conversation_slice,
    ideal_hit_tokens,
    make_requests,
)


def write_trace(path: Path) -> Path:
    rows = []
    for turn in range(3):  # three conversations of three turns each, interleaved
        for conv in range(3):
            base = 100 * (conv + 1)
            hashes = [0] + [base + i for i in range(2 + 2 * turn)]
            rows.append({"timestamp": 1000 * turn + conv, "input_length": 512 * len(hashes) - 100,
                         "output_length": 64, "hash_ids": hashes})
    rows.append({"timestamp": 9999, "input_length": 900, "output_length": 10, "hash_ids": [0, 7]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_slice_keeps_whole_conversations_in_order(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.jsonl")
    w = CacheWorkload(conversations=2, tokens_per_hash=32)
    rows = conversation_slice(trace, w, max_tokens=4096)
    assert [r["hash_ids"][1] for r in rows] == [100, 200] * 3  # the single-turn one is left out
    requests = make_requests(rows, w, vocab=2048)
    assert requests[2].prompt[:16] == requests[0].prompt[:16]  # a shared hash id, shared tokens
    ideal = ideal_hit_tokens(requests)
    assert ideal[0] == 0 and ideal[2] > 0


def test_run_bench_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.jsonl")
    w = CacheWorkload(conversations=3, tokens_per_hash=32, device_fraction=0.1, host_fraction=0.9)
    claim = run_bench(tiny_model_dir, w, trace, tmp_path / "claim.json")
    m = claim["metrics"]
    assert abs(m["hit_rate"] - m["ideal_hit_rate"]) < 1e-9  # every reusable block was served
    assert m["hit_rate_device_only"] < m["hit_rate"]
    assert m["memcpy_gbps"] > 0 and m["host_restore_gbps"] > 0
    assert claim["measured_at"].endswith("Z") and claim["concurrency"] == 1
    written = json.loads((tmp_path / "claim.json").read_text())
    assert written["metrics"]["ttft_p50_ratio"] == m["ttft_p50_ratio"]


def test_a_quick_trace_bench_is_a_smoke_run_that_writes_no_claim(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--quick` replays a smaller slice, which can tell another story than the full run: it
    says so, and a claim asked of it is refused with one line."""
    from aruntime.bench.report import SMOKE_NOTE
    from aruntime.cli import main

    trace = write_trace(tmp_path / "trace.jsonl")
    for bench in ("cache", "route"):
        status = main(["bench", bench, "--quick", "--trace", str(trace), "--json",
                       str(tmp_path / f"{bench}.json")])
        [line] = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and "smoke run" in line and "--json" in line
        assert not (tmp_path / f"{bench}.json").exists()
    assert "no claim is written" in SMOKE_NOTE
