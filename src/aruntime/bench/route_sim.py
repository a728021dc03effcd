"""The simulator's side of `bench route`: the engine's step costs calibrated as the workers run
(one thread, a fresh interpreter), the calibration as the serving path bore it out in the
warm-ups, and the simulator's replay of each run on it."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from aruntime.bench.route_results import PolicyResult
from aruntime.bench.route_warmup import Lone, WarmUp
from aruntime.bench.route_workload import BLOCK, RouteWorkload
from aruntime.engine.config import EngineConfig
from aruntime.kv.keys import KeyScheme, prefix_keys
from aruntime.sim.costs import Costs


def simulate(r: PolicyResult, costs: Costs, w: RouteWorkload, engine: EngineConfig,
             cores: int, worth: tuple[float, ...]) -> list[float]:
    """The simulator's TTFTs for the same requests sent at the same times on the same layout."""
    from aruntime.sim.model import Layout, SimConfig, predict
    from aruntime.sim.trace import SimRequest

    root = KeyScheme(BLOCK, "sim").root()  # the engine's blocks, under its digests
    reqs = [SimRequest(t, len(s.prompt), s.output_tokens,
                       tuple(int.from_bytes(k[:8]) for k in prefix_keys(root, s.prompt, BLOCK)),
                       BLOCK)
            for s, t in zip(r.requests, r.sent_s, strict=True)]
    config = SimConfig(cache_gb=engine.kv_cache_bytes / 1e9,
                       max_batched_tokens=engine.max_num_batched_tokens,
                       max_seqs=engine.max_num_seqs, seed=w.seed, cores=cores, worth=worth)
    return predict(reqs, Layout(w.workers), r.policy, costs, config).ttft_s


class Serving(NamedTuple):
    costs: Costs  # the calibration as the serving path runs it
    factor: float  # on the calibrated steps
    loop_s: float  # the serving loop's time a step, beyond the engine's


def serving_costs(costs: Costs, warm_up: WarmUp, chunk: int) -> Serving:
    """The calibration as the serving path runs it, from warm-ups' measurements. Lone requests'
    time in the engine, set against the calibrated prompt time, gives a factor on the steps
    (least squares through the origin): the engine processes run beside the router rather than
    alone, so their steps can run a little slower than calibrated. The rest of their TTFT, the
    median, is the hops (router, IPC, streaming). A lone request's decode steps, set against
    the scaled calibration, give what the serving loop adds to every step (the step's outputs
    and KV events sent, the next commands read), the median; the calibration, timing
    `engine.step()` alone, never sees it, and the first token pays it among the hops already.
    Warm turns after their engine idled, against the same turns back to back, give what waking
    an idle engine costs its first step (the median difference: caches gone cold)."""
    lone = warm_up.lone
    predicted = [costs.prompt_s(x.new, chunk, x.cached) for x in lone]
    factor = sum(p * x.engine_s for p, x in zip(predicted, lone, strict=True)) / sum(
        p * p for p in predicted)
    factor = min(2.0, max(0.5, factor))
    scaled = costs.scaled(factor)
    hops = max(0.0, statistics.median(x.ttft_s - x.engine_s for x in lone))
    loop = max(0.0, statistics.median(
        x.seconds - scaled.step_s0 - scaled.weights_s(1) - scaled.decode_s(1, x.context)
        for x in warm_up.decode_steps)) if warm_up.decode_steps else 0.0

    def beyond(probes: list[Lone]) -> float:
        return statistics.median(x.engine_s - scaled.prompt_s(x.new, chunk, x.cached)
                                 for x in probes)

    warm = [x for x in lone if x.cached]
    wake = max(0.0, beyond(warm_up.woken) - beyond(warm)) if warm_up.woken and warm else 0.0
    return Serving(replace(scaled, step_s0=scaled.step_s0 + loop,
                           request_s=max(0.0, hops - loop), wake_s=wake), factor, loop)


def _calibrate_here(model_dir: Path, chunk: int) -> tuple[Costs, list[str]]:
    from aruntime.sim.calibrate import calibrate

    lines: list[str] = []
    return calibrate(model_dir, quick=True, log=lines.append, bandwidths=False,
                     chunk=chunk), lines


def calibrate_workers(model_dir: Path, w: RouteWorkload,
                      note: Callable[[str], None]) -> tuple[Costs, float]:
    """Step costs measured in a process started as the workers are (one OpenMP thread, a fresh
    interpreter), and what the cores are worth with every worker busy."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from aruntime.sim.calibrate import effective_cores

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        costs, lines = ex.submit(_calibrate_here, model_dir, w.chunk).result()
    for line in lines:
        note(line)
    contended = effective_cores(model_dir, w.workers)
    note(f"{w.workers} one-thread engines prefilling at once do the work of {contended:.2f}")
    return costs, contended

