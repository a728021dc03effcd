"""The command line the trace benchmarks (`bench cache`, `bench route`) share."""

from __future__ import annotations

import argparse
from pathlib import Path

from aruntime.bench.cache_workload import TRACE


def add_trace_bench_arguments(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """The flags every trace-driven benchmark takes. Their `--quick` replays a smaller slice:
    another workload, not the same one with fewer repeats, so it is a smoke run that says so
    and writes no claim."""
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run, no claim: {quick_help}")
    parser.add_argument("--json", type=Path, help="write the claim record here")
    parser.add_argument("--model", type=Path, help="checkpoint dir (default: the small demo model)")
    parser.add_argument("--trace", type=Path, default=TRACE, help="a Mooncake-format JSONL trace")


def bench_model(args: argparse.Namespace) -> Path:
    """The checkpoint to run, after checking the trace exists (a one-line usage error if not)."""
    from aruntime.engine.demo import ensure_demo_model
    from aruntime.errors import UsageError

    if not args.trace.is_file():
        raise UsageError(f"trace {args.trace} not found")
    if args.quick and args.json is not None:
        raise UsageError("--quick is a smoke run of a smaller slice and writes no claim; "
                         "drop --json, or --quick")
    return Path(args.model or ensure_demo_model("small"))
