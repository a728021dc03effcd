"""`bench route`'s figures: the policies' table, the claim's metrics, and the claim itself (KV-
aware routing's TTFT p90 against round-robin's)."""

from __future__ import annotations

from pathlib import Path

from aruntime.bench.claim import ClaimSpec, model_ref
from aruntime.bench.route_results import PolicyRuns
from aruntime.bench.route_setup import Setup
from aruntime.bench.route_sim import Serving
from aruntime.bench.route_workload import RouteWorkload

Metrics = dict[str, float | int | str]


def table(results: dict[str, PolicyRuns], w: RouteWorkload) -> list[str]:
    """What the figures are, then a row of medians per policy."""
    lines = [f"medians over {w.repeats} run(s) of each policy; hit rate: all requests; ttft: "
             "after each group's first (cold) turn, which every policy must compute in full; "
             "'p90 all' includes it; 'sim p50' is the simulator's TTFT p50 (all requests) for "
             "the same sends, against the real one",
             f"{'policy':<12} {'hit rate':>8} {'ttft p50 ms':>12} {'ttft p90 ms':>12} "
             f"{'p90 all ms':>11} {'audit err':>9} {'sim p50 ms':>11} {'real p50 ms':>12} "
             f"{'sim err':>8}"]
    lines += [f"{p:<12} {rs.hit_rate:>8.1%} {rs.ttft_p50 * 1e3:>12.1f} "
              f"{rs.ttft_p90 * 1e3:>12.1f} {rs.ttft_p90_all * 1e3:>11.1f} {rs.audit_error:>9.1%} "
              f"{rs.sim_p50 * 1e3:>11.1f} {rs.ttft_p50_all * 1e3:>12.1f} {rs.sim_error:>8.1%}"
              for p, rs in results.items()]
    return lines


def serving_metrics(s: Setup, serving: Serving, worth: tuple[float, ...]) -> Metrics:
    """The load and what the serving path was found to cost, as the simulator ran on them."""
    return {"arrival_rate_rps": round(s.rate, 3), "contended_cores": round(s.contended, 3),
            "serving_step_factor": round(serving.factor, 4),
            "serving_loop_ms": round(serving.loop_s * 1e3, 3),
            "wake_ms": round(serving.costs.wake_s * 1e3, 3),
            "cores_worth_all_busy": round(worth[-1], 3)}


def metrics(results: dict[str, PolicyRuns], w: RouteWorkload, serving: Metrics) -> Metrics:
    kv, rr, rnd = results["kv"], results["round-robin"], results["random"]
    return {
        "hit_rate_kv": round(kv.hit_rate, 4), "hit_rate_round_robin": round(rr.hit_rate, 4),
        "hit_rate_random": round(rnd.hit_rate, 4),
        "ttft_p90_ratio": round(rr.ttft_p90 / kv.ttft_p90, 3),
        "ttft_p50_kv_ms": round(kv.ttft_p50 * 1e3, 3),
        "ttft_p50_round_robin_ms": round(rr.ttft_p50 * 1e3, 3),
        "ttft_p90_random_ms": round(rnd.ttft_p90 * 1e3, 3),
        "ttft_p90_all_ratio": round(rr.ttft_p90_all / kv.ttft_p90_all, 3),
        "audit_error": round(kv.audit_error, 4),
        **serving,
        "runs_per_policy": w.repeats,
        **{f"sim_ttft_p50_error_{p.replace('-', '_')}": round(rs.sim_error, 4)
           for p, rs in results.items()},
    }


def claim_spec(model_dir: Path, w: RouteWorkload, s: Setup, results: dict[str, PolicyRuns],
               serving: Metrics, hardware: str, duration_s: float) -> ClaimSpec:
    kv, rr = results["kv"], results["round-robin"]
    ratio = rr.ttft_p90 / kv.ttft_p90
    return ClaimSpec(
        statement=(f"With {w.workers} colocated workers, KV-aware routing gives {ratio:.2f}x lower "
                   f"p90 TTFT than round-robin on shared-prefix groups from the Mooncake "
                   f"conversation trace (hit rate {kv.hit_rate:.0%} vs {rr.hit_rate:.0%})"),
        metric="ttft_p90", value=round(kv.ttft_p90 * 1e3, 3), unit="ms",
        direction="lower-is-better",
        baseline_name="round-robin routing, same workers and workload",
        baseline_value=round(rr.ttft_p90 * 1e3, 3), metrics=metrics(results, w, serving),
        model=model_ref(model_dir), hardware=hardware,
        workload=(f"Mooncake conversation trace: first {w.groups} conversations of >= {w.turns} "
                  f"turns, {w.min_prompt}-{w.max_prompt} tokens, turns repeating >= "
                  f"{w.extends:.0%} of the last's blocks, {w.tokens_per_hash} tokens/hash id; "
                  f"Poisson {s.rate:.2f} req/s ({w.load:.0%} of cold capacity), a turn after the "
                  f"last answer; p90 after turn 1; median of {w.repeats} run(s)"),
        precision="fp32", context=s.longest, concurrency=w.groups, seed=w.seed,
        duration_s=duration_s, percentile="p90")
