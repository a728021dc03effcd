"""The cluster simulator: small deterministic traces written here, run through the real code."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from aruntime.sim import SLO, Costs, Layout, SimConfig, SimRequest, load_trace, predict
from aruntime.sim import costs as costs_mod
from aruntime.sim.calibrate import fit
from aruntime.sim.goodput import meets, search
from aruntime.sim.prefix_cache import PrefixCache
from aruntime.sim.trace import compress

# round numbers: a step is 10 ms + 1 ms per row (prefill token or decoding sequence) + 9 ms more
# per decoding sequence
SIMPLE = Costs(step_s0=0.01, prefill_token_s=0.001, prefill_attn_s=0.0, decode_seq_s=0.009,
               decode_ctx_s=0.0, kv_bytes_per_token=1_000_000, network_gbps=1.0)


def req(t: float, n: int, out: int, hashes: tuple[int, ...], block: int = 16) -> SimRequest:
    return SimRequest(t, n, out, hashes, block)


def test_prefix_cache_keeps_blocks_in_use_and_evicts_a_suffix_before_its_prefix() -> None:
    c = PrefixCache(device_blocks=3, host_blocks=2)
    assert c.take((1, 2)) == ([], 0)
    a = c.allocate(2)
    c.publish(a, 0, 1)
    c.publish(a, 1, 2)
    held = c.allocate(1)  # another sequence's block, in use throughout
    c.release(a)  # tail first: block 2 goes before block 1
    b = c.allocate(1)  # the pool is full: evicts block 2, to the host
    assert c.peek((1, 2, 9)) == 2 and c.peek_tiers((1, 2)) == {"device": 1, "host": 1}
    c.release(b)
    assert c.take((1, 2, 9)) == ([1, 2], 1)  # block 2 restored from the host into b's block
    assert c.peek_tiers((1, 2)) == {"device": 2} and c.overcommitted == 0
    extra = c.allocate(1)  # every block is in use: beyond the pool, and back to nothing after
    assert c.overcommitted == 1
    c.release(extra)
    c.release(held)
    assert c.overcommitted == 0 and len(c.free) == 1


def test_a_block_recomputed_while_on_the_host_is_kept_once() -> None:
    c = PrefixCache(device_blocks=1, host_blocks=2)
    a = c.allocate(1)
    c.publish(a, 0, 7)
    c.release(a)
    b = c.allocate(1)  # evicts 7 to the host
    assert c.peek_tiers((7,)) == {"host": 1}
    c.publish(b, 0, 7)  # computed again (a prompt whose earlier blocks missed)
    assert c.peek_tiers((7,)) == {"device": 1} and not c.host


def test_cache_hits_counted_right() -> None:
    reqs = [req(0, 48, 1, (1, 2, 3)), req(10, 48, 1, (1, 2, 4)), req(20, 48, 1, (5, 6, 7)),
            req(30, 32, 1, (1, 2))]  # a full-prompt hit still computes one token
    p = predict(reqs, Layout(1), "round-robin", SIMPLE)
    assert p.hit_tokens == 0 + 32 + 0 + 16  # full blocks only, as the engine reuses them
    assert p.prompt_tokens == 48 * 3 + 32


def test_kv_policy_beats_round_robin_on_shared_prefixes() -> None:
    # 6 conversations; each turn repeats its conversation's 4-block prefix, turns interleaved
    reqs = [req(i * 1.0, 80, 2, (*tuple(100 * (i % 6) + b for b in range(4)), 10000 + i))
            for i in range(60)]
    kv = predict(reqs, Layout(4), "kv", SIMPLE)
    rr = predict(reqs, Layout(4), "round-robin", SIMPLE)
    assert kv.hit_rate > rr.hit_rate
    assert kv.hit_rate == pytest.approx((54 * 64) / (60 * 80))  # every turn after the first hits


def test_pd_transfer_adds_the_expected_time() -> None:
    r = [req(0, 100, 3, (1,))]
    colo = predict(r, Layout(1), "kv", SIMPLE)
    pd = predict(r, Layout(1, 1), "kv", SIMPLE)
    assert colo.ttft_s[0] == pytest.approx(0.11) == pd.ttft_s[0]  # 10 ms + 100 x 1 ms
    assert colo.tpot_s[0] == pytest.approx(0.02)  # two decode steps of 10 + 10 ms
    transfer = 100 * 1_000_000 / 1e9  # 0.1 s over 1 GB/s
    assert pd.tpot_s[0] == pytest.approx((transfer + 0.04) / 2)


def test_new_work_cuts_a_decode_jump_after_the_step_in_flight() -> None:
    reqs = [req(0, 10, 101, (1,)), req(0.51, 10, 2, (2,))]
    p = predict(reqs, Layout(1), "kv", SIMPLE)
    # A decodes in 20 ms steps from 0.02; the step in flight at 0.51 ends at 0.52; B's prefill
    # step (10 + 10 + 10 ms) ends at 0.55
    assert p.ttft_s[1] == pytest.approx(0.04)
    assert p.ttft_s[0] == pytest.approx(0.02)
    # A: 100 tokens, one step of them 30 ms and one (with B decoding) 30 ms, the rest 20 ms
    assert p.tpot_s[0] == pytest.approx((98 * 0.02 + 2 * 0.03) / 100)


def _bursty(n: int = 200) -> list[SimRequest]:
    return [req(i * 0.5 + (i % 7) * 0.05, 64 + 16 * (i % 5), 8, (i % 9, 1000 + i))
            for i in range(n)]


def test_goodput_search_is_monotone() -> None:
    reqs = _bursty()
    slo = SLO(ttft_s=0.5, tpot_s=0.08)
    rates = [1, 2, 4, 8, 16, 32, 64]
    att = [predict(reqs, Layout(2), "least-loaded", SIMPLE, SimConfig(), compress(reqs, r))
           .attainment(slo) for r in rates]
    assert att == sorted(att, reverse=True)
    g = search(reqs, Layout(2), "least-loaded", SIMPLE, SimConfig(), slo, tolerance=0.05)
    assert g.rate > 0 and g.prediction is not None
    assert meets(reqs, Layout(2), "least-loaded", SIMPLE, SimConfig(), slo, g.rate)
    assert not meets(reqs, Layout(2), "least-loaded", SIMPLE, SimConfig(), slo, g.rate * 1.06)
    assert g.prediction.attainment(slo) >= 0.9


def test_an_slo_run_stops_once_out_of_reach() -> None:
    reqs = _bursty()
    p = predict(reqs, Layout(1), "kv", SIMPLE, SimConfig(), compress(reqs, 1000.0), SLO(0.01, 0.01))
    assert not p.complete and any(math.isnan(t) for t in p.tpot_s)


def test_calibration_fit_recovers_known_terms_and_round_trips(tmp_path: Path) -> None:
    # one row is cheap, two cost a jump, flat while the weights' reads bound a step, then linear
    truth = Costs(step_s0=0.004, prefill_token_s=2e-4, prefill_attn_s=1e-7, prefill_ctx_s=3e-6,
                  prefill_seq_s=0.001, rows_s=((2, 0.005), (16, 0.006), (64, 0.012)),
                  decode_seq_s=1e-3, decode_ctx_s=5e-8, kv_bytes_per_token=1)
    points = [(n, 0) for n in (1, 2, 4, 8, 16, 32, 64, 256, 1024, 2048)] + [
        (n, c) for c in (256, 1024) for n in (1, 16, 64)]
    prefill = [(n, c, truth.step_s0 + truth.prefill_seq_s + truth.prefill_s(n, c))
               for n, c in points]
    decode = [(b, c, truth.step_s0 + truth.weights_s(b) + truth.decode_s(b, b * c))
              for b in (1, 2, 4, 8, 32) for c in (128, 1024)]
    got = fit(prefill, decode)
    rows = (1, 2, 3, 5, 8, 12, 16, 40, 64, 100, 2048)
    assert [got.weights_s(n) for n in rows] == pytest.approx([truth.weights_s(n) for n in rows],
                                                             rel=1e-6, abs=1e-12)
    for name in ("step_s0", "prefill_token_s", "prefill_attn_s", "prefill_ctx_s", "prefill_seq_s",
                 "decode_seq_s", "decode_ctx_s"):
        assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=1e-6), name
    assert truth.weights_s(40) == pytest.approx(0.006 + 0.006 * 24 / 48)
    path = costs_mod.save(truth, tmp_path / "c.json")
    assert costs_mod.load(path) == truth
    path.write_text(json.dumps({**truth.to_json(), "version": 99}))
    with pytest.raises(ValueError, match="version"):
        costs_mod.load(path)


def _write_trace(path: Path, n: int = 60) -> Path:
    rows = [{"timestamp": i * 300, "input_length": 1024 + 512 * (i % 3), "output_length": 64,
             "hash_ids": [i % 5, 50 + i % 5, 1000 + i]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_trace_scales_lengths(tmp_path: Path) -> None:
    reqs = load_trace(_write_trace(tmp_path / "t.jsonl"), scale=8)
    assert reqs[1].input_len == 1536 // 8 and reqs[1].output_len == 8 and reqs[1].block_tokens == 64
    assert reqs[1].arrival_s == pytest.approx(0.3)


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARUNTIME_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "aruntime.cli", "sim", *args], env=env,
                          check=False, capture_output=True, text=True, timeout=120)


def test_sim_run_prints_the_table(tmp_path: Path) -> None:
    trace = _write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "r.json"
    p = _cli("run", "--trace", str(trace), "--workers", "4", "--pd", "colocated,1:1",
             "--policies", "kv,round-robin", "--jobs", "1", "--json", str(out), home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "calibration: NONE" in p.stdout  # no calibration file: it says so
    lines = p.stdout.splitlines()
    assert any(line.startswith("kv            colocated") for line in lines)
    assert any(line.startswith("round-robin   P:D 2:2") for line in lines)
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["goodput_rps"] >= 0 for r in rows)
    costs_mod.save(SIMPLE, tmp_path / "sim" / "calibration.json")
    p = _cli("run", "--trace", str(trace), "--workers", "2", "--pd", "1:1", "--policies", "kv",
             "--jobs", "1", home=tmp_path)
    assert p.returncode == 0 and "calibration: NONE" not in p.stdout


@pytest.mark.parametrize("flags", [["--pd", "0:3"], ["--pd", "a:b"], ["--policies", "best"],
                                   ["--workers", "0"], ["--trace", "/nonexistent.jsonl"],
                                   ["--calibration", "/nonexistent.json"]])
def test_sim_run_bad_flags_exit_2(tmp_path: Path, flags: list[str]) -> None:
    p = _cli("run", "--trace", str(_write_trace(tmp_path / "t.jsonl")), *flags, home=tmp_path)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("aruntime: error:")


def test_sim_calibrate_bad_model_exits_2(tmp_path: Path) -> None:
    p = _cli("calibrate", "--model", str(tmp_path / "missing"), home=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1


def test_workers_sharing_cores_slow_down_as_measured() -> None:
    assert [SimConfig(cores=2).slowdown(b) for b in (1, 2, 3, 4)] == [1.0, 1.0, 1.5, 2.0]
    config = SimConfig(cores=2, worth=(1.0, 1.9, 2.0, 1.6))
    assert config.slowdown(2) == pytest.approx(2 / 1.9)  # side by side, but sharing caches
    assert config.slowdown(3) == pytest.approx(1.5)
    assert config.slowdown(4) == pytest.approx(4 / 1.6)  # all busy: the measured worth
    assert SimConfig().slowdown(4) == 1.0  # a device each
    with pytest.raises(ValueError, match="worth"):
        SimConfig(cores=2, worth=(1.0, 2.5))


def test_shared_cores_and_request_hops_lengthen_ttft() -> None:
    reqs = [req(0, 100, 1, (i,)) for i in range(4)]  # four prompts at once, one per worker
    alone = predict(reqs, Layout(4), "round-robin", SIMPLE)
    shared = predict(reqs, Layout(4), "round-robin", SIMPLE, SimConfig(cores=2))
    step = SIMPLE.step_s0 + SIMPLE.prefill_s(100, 0)
    assert alone.ttft_s == pytest.approx([step] * 4)
    # four steps share two cores from the start: each runs at half speed to the end
    assert shared.ttft_s == pytest.approx([2 * step] * 4)
    staggered = [req(0, 100, 1, (0,)), req(step / 2, 100, 1, (1,)), req(step / 2, 100, 1, (2,))]
    # alone for half a step, then three share two cores (2/3 speed): the first's last half
    # takes 3/4 of a step; the others have done half of theirs by then, and finish the other
    # half at full speed
    got = predict(staggered, Layout(3), "round-robin", SIMPLE, SimConfig(cores=2)).ttft_s
    assert got == pytest.approx([1.25 * step] * 3)
    hops = replace(SIMPLE, request_s=0.005)
    assert predict(reqs, Layout(4), "round-robin", hops).ttft_s == pytest.approx([step + 0.005] * 4)


def test_only_a_step_after_its_worker_idled_pays_the_wake() -> None:
    woken = replace(SIMPLE, wake_s=0.004)
    step = SIMPLE.step_s0 + SIMPLE.prefill_s(100, 0)
    reqs = [req(0, 100, 1, (1,)), req(step / 2, 100, 1, (2,)), req(10, 100, 1, (3,))]
    got = predict(reqs, Layout(1), "round-robin", woken).ttft_s
    # the second waits for the first's step and follows it at once; the third finds it idle
    assert got == pytest.approx([step + 0.004, 2 * step + 0.004 - step / 2, step + 0.004])


def test_calibrate_measures_the_kv_transport_between_two_engines(tiny_model_dir: Path) -> None:
    from aruntime.engine.config import ModelConfig
    from aruntime.sim.calibrate import transport_gbps

    cfg = ModelConfig.from_hf(json.loads((tiny_model_dir / "config.json").read_text()))
    gbps = transport_gbps(tiny_model_dir, cfg.kv_bytes_per_token(), tokens=96)
    assert gbps is not None and gbps > 0  # the decode engine restored the prefill's blocks
