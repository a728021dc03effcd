"""`aruntime bench route`: KV-aware routing against round-robin and random, 4 colocated workers,
and the simulator's prediction of the same run.

Shared-prefix groups are whole conversations of the Mooncake conversation trace, scaled as in
`bench cache` (each 512-token hash id becomes seeded tokens): every turn extends the last, so a
group's prompts share a growing prefix. Arrivals are open-loop, as users arrive: a seeded Poisson
schedule over the turns in rounds (turn k of every group, shuffled, before turn k+1), except that
a user sends a turn only after the answer to the previous one came back. The rate is set from a
calibration of the engine measured at the start of the run (one thread, as each worker has): the
offered load is `load` times what the cores could serve if no prompt were cached, near where a
cache-blind router saturates while a cache-aware one has room. Each worker's device pool holds
a little more than its share of groups, so a router that scatters a group makes workers thrash.

Each policy runs `repeats` times, the policies taking turns so that the machine's drift falls on
all of them, and every figure is the median over a policy's runs: near saturation on a shared
machine one run's TTFT p50 moves by tens of percent.

TTFT is measured from each request's send. The routing audit compares the cached tokens the router
predicted with those the engines reused. Then the simulator replays each run (the same requests
at the same send times, on workers sharing the machine's cores) and the median of its TTFT p50s
is set against the real one. It runs on the calibrated step costs as the serving path bore them
out in the runs' warm-ups (lone requests give a factor on the steps, the serving loop's time a
step, what waking an idle engine costs, and the hops) and on what the cores were worth there
with 1..N workers busy. The last line is round-robin's TTFT p90 over kv's.

This module runs the policies in turn and reports; the workload, the warm-up, one run of a
policy, the results and the simulator's side each have their own `route_*` module.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from aruntime.bench import hardware
from aruntime.bench.cache_workload import TRACE
from aruntime.bench.report import Report
from aruntime.bench.route_figures import claim_spec, serving_metrics, table
from aruntime.bench.route_results import PolicyRuns
from aruntime.bench.route_runs import run_policy
from aruntime.bench.route_setup import Setup, prepare
from aruntime.bench.route_sim import Serving, serving_costs, simulate
from aruntime.bench.route_warmup import IDLE_S, WarmUp, busy_tokens
from aruntime.bench.route_workload import BLOCK, POLICIES, QUICK, RouteWorkload
from aruntime.bench.trace_args import add_trace_bench_arguments, bench_model
from aruntime.engine.core_proc import SWITCH_INTERVAL_S
from aruntime.sim.costs import Costs


def run_policies(s: Setup, w: RouteWorkload, report: Report) -> dict[str, PolicyRuns]:
    results = {p: PolicyRuns(p) for p in POLICIES}
    for k in range(w.repeats):  # interleaved, so the machine's drift falls on every policy
        for p in POLICIES:
            r = run_policy(s.config, p, s.groups, w, s.longest)
            results[p].runs.append(r)
            report.line(f"run {k + 1}/{w.repeats} {p}: hit rate {r.hit_rate:.1%}, ttft p50 "
                        f"{r.ttft_p50 * 1e3:.1f} ms, p90 {r.ttft_p90 * 1e3:.1f} ms, p50 all "
                        f"{r.ttft_p50_all * 1e3:.1f} ms")
    return results


def fit_serving(results: dict[str, PolicyRuns], s: Setup, w: RouteWorkload,
                report: Report) -> tuple[Serving, tuple[float, ...]]:
    """The calibration as every run's warm-up bore it out, and what the cores were worth there
    with 1..N workers busy."""
    runs = [r for rs in results.values() for r in rs.runs]
    pooled = WarmUp(*([x for r in runs for x in getattr(r.warm_up, name)]
                      for name in ("lone", "woken", "decode_steps")))
    serving = serving_costs(s.costs, pooled, w.chunk)
    costs, factor, loop = serving
    report.line(f"{len(pooled.lone)} lone requests, {len(pooled.woken)} after their engine "
                f"idled {IDLE_S * 1e3:.0f} ms and {len(pooled.decode_steps)} decode steps "
                f"through the serving path: TTFT = {factor:.3f} x the calibration's engine "
                f"steps, each {loop * 1e3:.2f} ms longer for the serving loop, the first after "
                f"idling {costs.wake_s * 1e3:.2f} ms longer still, + "
                f"{costs.request_s * 1e3:.1f} ms of hops")
    together = [statistics.median(r.warm_up.together_s[b] for r in runs)
                for b in range(w.workers)]
    worth = tuple(min(b, b * together[0] / t) for b, t in enumerate(together, 1))
    report.line(f"cold {busy_tokens(s.longest)}-token prompts sent at once to 1..{w.workers} "
                f"workers: last first token after {', '.join(f'{t * 1e3:.0f}' for t in together)}"
                f" ms; the cores worth {', '.join(f'{x:.2f}' for x in worth)} workers to the "
                f"serving path ({s.contended:.2f} to {w.workers} engines alone)")
    return serving, worth


def simulate_runs(results: dict[str, PolicyRuns], costs: Costs, worth: tuple[float, ...],
                  s: Setup, w: RouteWorkload, report: Report) -> None:
    """The simulator's replay of every run, its TTFT p50 against the real one; a raw log row
    per request with both TTFTs."""
    for rs in results.values():
        for k, r in enumerate(rs.runs, 1):
            sim = simulate(r, costs, w, s.config, s.cores, worth)
            rs.simulated.append(sim)
            real, predicted = r.ttft_p50_all, statistics.median(sim)
            report.line(f"run {k}/{w.repeats} {r.policy}: sim ttft p50 {predicted * 1e3:.1f} ms "
                        f"against {real * 1e3:.1f} real ({(predicted - real) / real:+.1%})")
            report.rows(f"{r.policy} run={k} {i} sent_s={r.sent_s[i]:.4f} "
                        f"worker={r.workers[i]} predicted={r.predicted[i]} used={r.used[i]} "
                        f"ttft_s={t:.5f} sim_ttft_s={sim[i]:.5f}" for i, t in enumerate(r.ttft_s))


def run_bench(model_dir: Path, w: RouteWorkload, trace: Path = TRACE,
              json_path: Path | None = None,
              calibration: tuple[Costs, float] | None = None, *,
              smoke: bool = False) -> dict[str, Any]:
    """`calibration`: (costs, contended cores) to use instead of measuring them (tests)."""
    # 4 engine processes share the cores: one torch thread each, set before they spawn
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // w.workers)))
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # this process routes and streams, as the API does
    started = time.time()
    hw = hardware.describe("cpu")
    report = Report(live=True)
    s = prepare(model_dir, w, trace, calibration, hw["usable_cores"], report)
    report.line(f"aruntime bench route: {w.groups} groups x {w.turns} turns = "
                f"{w.groups * w.turns} requests on {w.workers} workers sharing {s.cores} cores; "
                f"longest prompt {s.longest} tokens; {s.pool_blocks} KV blocks of {BLOCK} tokens "
                f"per worker; Poisson arrivals at {s.rate:.2f} req/s ({w.load:.0%} of the "
                "cores' capacity with nothing cached)")
    results = run_policies(s, w, report)
    serving, worth = fit_serving(results, s, w, report)
    simulate_runs(results, serving.costs, worth, s, w, report)
    report.lines(table(results, w))
    ratio = results["round-robin"].ttft_p90 / results["kv"].ttft_p90
    claim = claim_spec(model_dir, w, s, results, serving_metrics(s, serving, worth),
                       hardware.summary(hw), round(time.time() - started, 3))
    return report.finish(f"ttft p90 ratio round-robin / kv: {ratio:.2f}", claim, json_path,
                         smoke=smoke).record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trace_bench_arguments(parser,
                              "fewer groups and turns, one run of each policy (about a minute)")


def run(args: argparse.Namespace) -> int:
    from aruntime.errors import UsageError

    model = bench_model(args)
    try:
        run_bench(model, QUICK if args.quick else RouteWorkload(), args.trace, args.json,
                  smoke=args.quick)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return 0
