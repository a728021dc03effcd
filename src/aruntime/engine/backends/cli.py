"""`aruntime backends list` (what this machine has of each backend, and what is missing) and
`aruntime backends calibrate [--model M]` (the cost table `serve --backends auto` reads)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aruntime import paths
from aruntime.engine.default_model import MODEL_HELP
from aruntime.errors import UsageError


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="as JSON")


def run_list(args: argparse.Namespace) -> int:
    from aruntime.engine.backends.registry import listing

    rows = listing()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    for r in rows:
        state = r["version"] if r["available"] else f"missing: {r['missing']}"
        print(f"{r['name']:<14} {state}")
    return 0


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--backends", default="all", metavar="NAME,...",
                        help="which to time (default: every backend available here)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--quick", action="store_true", help="fewer buckets and repeats")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help=f"where the table and caches go (default: {paths.data_dir()})")


def run_calibrate(args: argparse.Namespace) -> int:
    from aruntime.engine.backends.calibrate import (
        DECODE_BUCKETS,
        DECODE_CONTEXTS,
        KV_BYTES,
        PREFILL_BUCKETS,
        all_backends,
        calibrate,
    )
    from aruntime.engine.backends.registry import known
    from aruntime.engine.backends.registry import names as backend_names
    from aruntime.engine.backends.table import table_path
    from aruntime.engine.config import EngineConfig
    from aruntime.engine.default_model import checked_model
    from aruntime.engine.llm_engine import LLMEngine
    from aruntime.engine.loader import CheckpointError

    names = all_backends() if args.backends == "all" else args.backends.split(",")
    unknown = [n for n in names if not known(n)]
    if unknown:
        raise UsageError(f"--backends: no backend {unknown[0]!r} ({', '.join(backend_names())})")
    try:
        engine = LLMEngine(EngineConfig(model=str(checked_model(args.model or "default")),
                                        dtype=args.dtype, kv_cache_bytes=KV_BYTES,
                                        max_num_seqs=max(DECODE_BUCKETS)))
    except (CheckpointError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    buckets = ({"decode": (1, 8), "prefill": (64,)} if args.quick
               else {"decode": DECODE_BUCKETS, "prefill": PREFILL_BUCKETS})
    root = (args.data_dir or paths.data_dir()) / "backends"
    table = calibrate(engine, names, root, buckets, repeats=3 if args.quick else 7,
                      contexts=DECODE_CONTEXTS[:1] if args.quick else DECODE_CONTEXTS)
    path = table_path(root, engine.revision, args.dtype)
    table.save(path)
    for key, costs in table.seconds.items():
        best = min(costs, key=lambda b: costs[b])
        shown = ", ".join(f"{b} {s * 1e3:.2f} ms" for b, s in sorted(costs.items()))
        print(f"{key:<14} {best:<14} ({shown})")
    for name, why in table.refused.items():
        print(f"refused: {name}: {why}")
    print(f"table: {path}")
    return 0
