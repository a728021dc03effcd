"""`aruntime bench route` machinery on the tiny model with a small workload: fields, not speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aruntime.bench.route import run_bench
from aruntime.bench.route_sim import serving_costs
from aruntime.bench.route_warmup import Lone, LoneStep, WarmUp
from aruntime.bench.route_workload import RouteWorkload, make_groups, schedule
from aruntime.sim.costs import DEFAULTS

SMALL = RouteWorkload(groups=4, turns=2, workers=2, max_prompt=300, min_prompt=16, max_output=2,
                      repeats=2)


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


def test_groups_are_conversations_whose_turns_extend_a_shared_prefix(trace: Path) -> None:
    groups = make_groups(SMALL, 2048, trace)
    assert [len(turns) for turns in groups] == [2, 2, 2, 2]
    for first, second in groups:  # turns share their first two hash ids (8 tokens each)
        assert second.prompt[:16] == first.prompt[:16]
    assert len({tuple(turns[0].prompt[:16]) for turns in groups}) == 4


def test_schedule_keeps_turns_in_order_at_the_offered_load(trace: Path) -> None:
    groups = make_groups(SMALL, 2048, trace)
    rate = schedule(SMALL, groups, DEFAULTS, cores=2)
    for first, second in groups:  # each conversation's turns in order
        assert 0 < first.at < second.at
    times = [s.at for turns in groups for s in turns]
    assert len(set(times)) == len(times)
    doubled = schedule(SMALL, groups, DEFAULTS, cores=4)
    assert doubled == pytest.approx(2 * rate)  # capacity scales with the cores


def test_serving_costs_finds_the_step_factor_the_loop_the_wake_and_the_hops() -> None:
    shapes = [(16, 0), (16, 384), (256, 0), (64, 128)] * 3
    slower = DEFAULTS.scaled(1.2)
    lone = [Lone(n, c, slower.prompt_s(n, 256, c) + 0.003, slower.prompt_s(n, 256, c))
            for n, c in shapes]
    woken = [x._replace(ttft_s=x.ttft_s + 0.0025, engine_s=x.engine_s + 0.0025)
             for x in lone if x.cached]  # the same warm turns, each 2.5 ms longer after idling
    steps = [LoneStep(ctx, slower.step_s0 + slower.weights_s(1) + slower.decode_s(1, ctx) + 0.002)
             for ctx in range(400, 408)]  # each step 2 ms longer in the serving loop
    costs, factor, loop = serving_costs(DEFAULTS, WarmUp(lone, woken, steps), 256)
    assert factor == pytest.approx(1.2)
    assert loop == pytest.approx(0.002)
    assert costs.wake_s == pytest.approx(0.0025)
    assert costs.request_s == pytest.approx(0.001)  # the first token paid the loop among hops
    assert costs.step_s0 == pytest.approx(slower.step_s0 + 0.002)
    assert costs.request_s + costs.prompt_s(16, 256, 384) == pytest.approx(lone[1].ttft_s)
    bare = serving_costs(DEFAULTS, WarmUp(lone), 256)  # nothing measured: neither is assumed
    assert bare.loop_s == 0.0 and bare.costs.wake_s == 0.0


def test_bench_route_writes_a_claim_with_the_audit(tiny_model_dir: Path, tmp_path: Path,
                                                    trace: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "route.json"
    claim = run_bench(tiny_model_dir, SMALL, trace, json_path=out, calibration=(DEFAULTS, 1.5))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("ttft p90 ratio round-robin / kv: ")
    for key in ("hit_rate_kv", "hit_rate_round_robin", "ttft_p90_ratio", "audit_error",
                "sim_ttft_p50_error_kv", "arrival_rate_rps", "serving_loop_ms"):
        assert key in claim["metrics"]
    assert 0.0 <= claim["metrics"]["hit_rate_kv"] <= 1.0
    assert claim["metrics"]["runs_per_policy"] == 2
    assert sum(line.startswith("run 2/2 ") for line in lines) == 2 * 3  # real and simulated
    assert claim["metrics"]["audit_error"] >= 0.0
    assert json.loads(out.read_text())["metric"] == "ttft_p90"
    log = Path(str(out) + ".log").read_text()
    assert "predicted=" in log and "used=" in log and "sim_ttft_s=" in log
    assert "random run=2 " in log
