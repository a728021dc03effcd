"""`aruntime sim run` and `aruntime sim calibrate`.

`sim run` searches goodput for every routing policy x layout (colocated and each P:D ratio) and
prints one table. It runs on the calibration file (`sim calibrate` writes it); without one it
runs on built-in PERF_NOTES figures and says so on its first line."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from aruntime.bench.cache_workload import TRACE
from aruntime.sim import costs as costs_mod
from aruntime.sim.costs import Costs
from aruntime.sim.goodput import Goodput, search
from aruntime.sim.model import SLO, Layout, SimConfig
from aruntime.sim.policies import POLICIES
from aruntime.sim.trace import SimRequest, load_trace, native_rate


def _usage(message: str) -> Exception:
    from aruntime.errors import UsageError

    return UsageError(message)


def parse_policies(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad or not names:
        raise _usage(f"--policies: unknown {', '.join(bad) or '(none)'}; "
                     f"known: {', '.join(POLICIES)}")
    return names


def parse_layouts(text: str, workers: int) -> list[Layout]:
    """`colocated,1:1,1:3` -> layouts of `workers` workers."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "colocated":
            out.append(Layout(workers))
            continue
        p, sep, d = part.partition(":")
        if not sep or not p.isdigit() or not d.isdigit() or int(p) < 1 or int(d) < 1:
            raise _usage(f"--pd: {part!r} is not P:D (e.g. 1:3) or 'colocated'")
        if workers < 2:
            raise _usage("--pd: a P:D layout needs --workers >= 2")
        out.append(Layout.ratio(workers, int(p), int(d)))
    if not out:
        raise _usage("--pd: give at least one layout")
    return out


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", type=Path, default=TRACE, help="a Mooncake-format JSONL trace")
    parser.add_argument("--limit", type=int, help="only the first N requests")
    parser.add_argument("--scale", type=int, default=8,
                        help="divide every length by this (8: a 512-token block is 64 tokens, the "
                             "scale `bench cache` runs the demo model at)")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--pd", default="colocated,1:1,1:3",
                        help="layouts: 'colocated' and P:D ratios, comma-separated")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--ttft-slo-ms", type=float, default=5000.0)
    parser.add_argument("--tpot-slo-ms", type=float, default=100.0)
    parser.add_argument("--cache-gb", type=float, default=4.0,
                        help="device prefix cache per worker")
    parser.add_argument("--host-gb", type=float, default=0.0, help="host KV tier per worker")
    parser.add_argument("--network-gbps", type=float, help="override the calibrated KV link")
    parser.add_argument("--calibration", type=Path, help="default: <home>/sim/calibration.json")
    parser.add_argument("--jobs", type=int, default=2, help="processes for the searches")
    parser.add_argument("--json", type=Path, help="write the results here")


def load_costs(args: argparse.Namespace) -> tuple[Costs, str]:
    path = args.calibration or costs_mod.default_path()
    if args.calibration is None and not path.is_file():
        return costs_mod.DEFAULTS, (f"calibration: NONE at {path}; using built-in PERF_NOTES "
                                    "defaults (run `aruntime sim calibrate` to measure)")
    try:
        c = costs_mod.load(path)
    except ValueError as exc:
        raise _usage(str(exc)) from None
    return c, f"calibration: {path} ({c.model}, {c.hardware}, {c.measured_at})"


def _search(job: tuple[list[SimRequest], Layout, str, Costs, SimConfig, SLO]) -> Goodput:
    return search(*job)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 \
        else (values[0] if values else float("nan"))


def row(policy: str, layout: Layout, g: Goodput) -> dict[str, Any]:
    p = g.prediction
    r: dict[str, Any] = {"policy": policy, "layout": layout.name, "prefill_workers": layout.prefill,
                         "decode_workers": layout.decode, "goodput_rps": round(g.rate, 4),
                         "runs": g.runs}
    if p is not None:
        r.update(hit_rate=round(p.hit_rate, 4),
                 ttft_p50_ms=_pct(p.ttft_s, 50) * 1e3, ttft_p90_ms=_pct(p.ttft_s, 90) * 1e3,
                 tpot_p50_ms=_pct(p.tpot_s, 50) * 1e3, tpot_p90_ms=_pct(p.tpot_s, 90) * 1e3)
    return r


def _fmt(r: dict[str, Any]) -> str:
    if "hit_rate" not in r:
        return (f"{r['policy']:<13} {r['layout']:<12} {0.0:>9.3f} "
                f"{'-':>6} {'-':>9} {'-':>9} {'-':>8} {'-':>8}")
    return (f"{r['policy']:<13} {r['layout']:<12} {r['goodput_rps']:>9.3f} {r['hit_rate']:>6.1%} "
            f"{r['ttft_p50_ms']:>9.0f} {r['ttft_p90_ms']:>9.0f} {r['tpot_p50_ms']:>8.1f} "
            f"{r['tpot_p90_ms']:>8.1f}")


def run_run(args: argparse.Namespace) -> int:
    if not args.trace.is_file():
        raise _usage(f"trace {args.trace} not found")
    if (args.workers < 1 or args.scale < 1 or args.jobs < 1
            or (args.limit is not None and args.limit < 2)):
        raise _usage("--workers, --scale and --jobs must be >= 1, --limit >= 2")
    if args.ttft_slo_ms <= 0 or args.tpot_slo_ms <= 0 or args.cache_gb < 0 or args.host_gb < 0:
        raise _usage("SLOs must be positive and cache sizes >= 0")
    policies, layouts = parse_policies(args.policies), parse_layouts(args.pd, args.workers)
    c, note = load_costs(args)
    if args.network_gbps is not None:
        if args.network_gbps <= 0:
            raise _usage("--network-gbps must be positive")
        c = costs_mod.replace_network(c, args.network_gbps)
    try:
        requests = load_trace(args.trace, args.limit, args.scale)
    except ValueError as exc:
        raise _usage(str(exc)) from None
    if len(requests) < 2:
        raise _usage(f"trace {args.trace} has fewer than 2 requests")
    config = SimConfig(cache_gb=args.cache_gb, host_gb=args.host_gb)
    slo = SLO(args.ttft_slo_ms / 1e3, args.tpot_slo_ms / 1e3)
    print(note)
    print(f"trace: {args.trace.name}, {len(requests)} requests, native rate "
          f"{native_rate(requests):.3f} req/s; {args.workers} workers; SLO TTFT "
          f"{args.ttft_slo_ms:g} ms, TPOT {args.tpot_slo_ms:g} ms, 90% attainment", flush=True)
    started = time.perf_counter()
    jobs = [(requests, lay, pol, c, config, slo) for pol in policies for lay in layouts]
    if args.jobs > 1:
        with ProcessPoolExecutor(min(args.jobs, len(jobs))) as pool:
            results = list(pool.map(_search, jobs))
    else:
        results = [_search(j) for j in jobs]
    rows = [row(j[2], j[1], g) for j, g in zip(jobs, results, strict=False)]
    print(f"{'policy':<13} {'layout':<12} {'goodput/s':>9} {'hit':>6} {'ttft p50':>9} "
          f"{'ttft p90':>9} {'tpot p50':>8} {'tpot p90':>8}   (ms)")
    for r in rows:
        print(_fmt(r))
    wall = time.perf_counter() - started
    print(f"{sum(g.runs for g in results)} simulated runs in {wall:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "calibration": c.to_json(), "trace": str(args.trace), "requests": len(requests),
            "workers": args.workers, "ttft_slo_ms": args.ttft_slo_ms,
            "tpot_slo_ms": args.tpot_slo_ms, "wall_s": round(wall, 3), "rows": rows}, indent=2))
    return 0


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer points (under a minute)")
    parser.add_argument("--model", type=Path, help="checkpoint dir (default: the small demo model)")
    parser.add_argument("--out", type=Path, help="default: <home>/sim/calibration.json")


def run_calibrate(args: argparse.Namespace) -> int:
    from aruntime.engine.demo import ensure_demo_model
    from aruntime.sim.calibrate import calibrate

    model = args.model or ensure_demo_model("small")
    if not (Path(model) / "config.json").is_file():
        raise _usage(f"--model {model}: no config.json there")
    c = calibrate(Path(model), quick=args.quick, log=print)
    path = costs_mod.save(c, args.out)
    print(f"wrote {path}")
    return 0
