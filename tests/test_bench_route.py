"""`aruntime bench route` machinery on the tiny model with a small workload: fields, not speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aruntime.bench.route import RouteWorkload, make_rounds, run_bench

SMALL = RouteWorkload(groups=4, turns=2, workers=2, max_prompt=300, max_output=2)


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """A Mooncake-format trace of five conversations of three turns, written here."""
    rows = []
    for turn in range(3):
        for conv in range(5):
            hashes = [0] + [1000 * (conv + 1) + i for i in range(2 + 2 * turn)]
            rows.append({"timestamp": 1000 * turn + conv, "input_length": 512 * len(hashes) - 50,
                         "output_length": 64, "hash_ids": hashes})
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_rounds_are_groups_whose_turns_extend_a_shared_prefix(trace: Path) -> None:
    rounds = make_rounds(SMALL, 2048, trace)
    assert [len(r) for r in rounds] == [4, 4]
    first = {s.group: s.prompt for s in rounds[0]}
    for s in rounds[1]:  # a conversation's turns share their first two hash ids (8 tokens each)
        assert s.prompt[:16] == first[s.group][:16]
    assert len({tuple(p[:16]) for p in first.values()}) == 4


def test_bench_route_writes_a_claim_with_the_audit(tiny_model_dir: Path, tmp_path: Path,
                                                    trace: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "route.json"
    claim = run_bench(tiny_model_dir, SMALL, trace, json_path=out)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("ttft p90 ratio round-robin / kv: ")
    for key in ("hit_rate_kv", "hit_rate_round_robin", "ttft_p90_ratio", "audit_error"):
        assert key in claim["metrics"]
    assert 0.0 <= claim["metrics"]["hit_rate_kv"] <= 1.0
    assert claim["metrics"]["audit_error"] >= 0.0
    assert json.loads(out.read_text())["metric"] == "ttft_p90"
    log = Path(str(out) + ".log").read_text()
    assert "predicted=" in log and "used=" in log
