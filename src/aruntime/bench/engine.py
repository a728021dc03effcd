"""`aruntime bench engine`: ARuntime's engine against transformers `generate`, in one run.

One workload (random prompt token ids from a seed, greedy, `ignore_eos` so output lengths hold)
goes through both systems on the same checkpoint:

- ARuntime: every request added at once, `step()` until done (continuous batching);
- transformers: left-padded static batches of 8 in arrival order, each batch decoding to its
  longest output; only each request's own output tokens count.

Beside the throughput ratio it measures the TTFT of a request whose long prefix is cached
against the same request with prefix caching off, model FLOPs utilisation against a matmul
roofline measured in the same run, and ARuntime's peak RSS. ARuntime runs first, so its peak RSS
is read before transformers loads anything.

This module measures, in that order, and holds the command line; the workload, the two systems
and the figures each have their own `engine_*` module. Heavy imports (torch, transformers, the
engine) are deferred: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from aruntime.bench.engine_baseline import TransformersBaseline
from aruntime.bench.engine_figures import Measured, outcome
from aruntime.bench.engine_systems import measure_ttft, run_aruntime
from aruntime.bench.engine_workload import FULL, QUICK, Workload, make_requests
from aruntime.bench.model_costs import load_model_config
from aruntime.bench.probes import matmul_gflops, peak_rss_mb
from aruntime.bench.report import Outcome, add_json_argument, json_path, progress_notes
from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import DEFAULT, DEMO


def measure(model_dir: Path, workload: Workload, matmul_n: int,
            note: Callable[[str], None]) -> Measured:
    """ARuntime's first round, its TTFT probes, then the baseline's first round and the further
    rounds of both, alternating; the roofline before and after the probes."""
    from aruntime.engine.runner import resolve_device

    started, start_rss = time.perf_counter(), peak_rss_mb()
    m = load_model_config(model_dir)
    requests, probes = make_requests(workload, m.vocab_size)
    device = str(resolve_device(EngineConfig(model=str(model_dir)).device))  # the engine's pick

    note(f"roofline: {matmul_n}x{matmul_n} fp32 matmul")
    rooflines = [matmul_gflops(device, matmul_n)]
    note(f"aruntime: {len(requests)} requests, round 1 of {workload.rounds}")
    first, revision = run_aruntime(model_dir, requests, m)
    rss = {"start": start_rss, "throughput_phase": peak_rss_mb()}  # ARuntime's own figure
    note("aruntime: TTFT, prefix cached against prefix caching off")
    ttft = measure_ttft(model_dir, probes, m)
    rss["after_ttft_two_engines"] = peak_rss_mb()
    note("roofline again")  # the machine is shared: the ceiling is the better of two readings
    rooflines.append(matmul_gflops(device, matmul_n))
    note("transformers baseline, round 1")
    baseline_model = TransformersBaseline(model_dir, device)
    rounds = [(first, baseline_model.run(requests, workload.baseline_batch))]
    for i in range(2, workload.rounds + 1):  # alternate, so load from elsewhere hits both
        note(f"round {i} of {workload.rounds}")
        rounds.append((run_aruntime(model_dir, requests, m)[0],
                       baseline_model.run(requests, workload.baseline_batch)))
    del baseline_model
    gc.collect()
    return Measured(model_dir, workload, m, device, matmul_n, requests, probes, revision, rounds,
                    ttft, rooflines, rss, time.perf_counter() - started)


def run_bench(model_dir: Path, workload: Workload, *, json_path: Path | None = None,
              matmul_n: int = 2048, out: TextIO | None = None,
              progress: TextIO | None = None) -> Outcome:
    """Measure everything in one run, print the report (to `out`, default stdout; progress notes
    to stderr) and write the claim record if asked."""
    measured = measure(model_dir, workload, matmul_n, progress_notes(progress))
    return outcome(measured, json_path, out)


# ---- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"the same workload, {QUICK.rounds} round instead of {FULL.rounds} "
                             f"and {QUICK.ttft_repeats} TTFT probes instead of "
                             f"{FULL.ttft_repeats}")
    add_json_argument(parser)
    parser.add_argument("--model", metavar="MODEL", default=DEMO,
                        help=f"{DEMO} (the random demo checkpoint the published claim is "
                             f"measured on; the default), {DEFAULT} (SmolLM2-135M-Instruct), a "
                             "Llama-family checkpoint directory or a .gguf file")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from aruntime.engine.default_model import checked_model
    from aruntime.errors import UsageError

    workload = replace(QUICK if args.quick else FULL, seed=args.seed)
    json_path(args)  # a directory is a usage error, before anything runs
    model_dir = checked_model(args.model)
    try:
        limit = load_model_config(model_dir).max_position_embeddings
    except ValueError as exc:  # unparsable JSON, a ModelConfigError or a CheckpointError
        raise UsageError(f"--model {model_dir}: {exc}") from None
    need = max(workload.prefix_len + workload.suffix_len + 1,
               workload.prompt_len[1] + workload.output_len[1])
    if limit < need:
        raise UsageError(f"--model {model_dir}: context {limit} is shorter than the {need} "
                         "tokens the workload needs")
    run_bench(model_dir, workload, json_path=args.json)
    return 0

