"""`bench route`'s layout and load, fixed before the first policy runs: the groups, the engine's
calibrated step costs (measured unless a test gives them), the arrival schedule set on them, and
the workers' engine config, whose device pool holds a little more than a worker's share of
groups."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aruntime.bench.model_costs import block_bytes
from aruntime.bench.report import Report
from aruntime.bench.route_sim import calibrate_workers
from aruntime.bench.route_workload import (
    BLOCK,
    MAX_SEQS,
    RouteWorkload,
    Sent,
    make_groups,
    schedule,
)
from aruntime.engine.config import EngineConfig
from aruntime.sim.costs import Costs


@dataclass(frozen=True, slots=True)
class Setup:
    """The run's layout and load, fixed before the first policy runs."""

    groups: list[list[Sent]]
    costs: Costs  # the engine's step costs at one thread, calibrated in this run (or given)
    contended: float  # what the cores are worth to the engines with every one prefilling
    cores: int
    rate: float  # the offered load, req/s
    longest: int  # prompt tokens
    pool_blocks: int  # each worker's device pool
    config: EngineConfig  # every worker's


def prepare(model_dir: Path, w: RouteWorkload, trace: Path,
            calibration: tuple[Costs, float] | None, cores: int, report: Report) -> Setup:
    """The groups, the calibration (measured unless given) and the arrival schedule on it, and
    the workers' engine config."""
    cfg = json.loads((model_dir / "config.json").read_text())
    groups = make_groups(w, cfg["vocab_size"], trace)
    if calibration is None:
        report.line("calibrating the engine at one thread (the workers' setting)")
        calibration = calibrate_workers(model_dir, w, report.line)
    costs, contended = calibration
    rate = schedule(w, groups, costs, min(contended, cores))
    longest = max(len(s.prompt) for turns in groups for s in turns)
    pool_blocks = int(w.pool_share * w.groups / w.workers * (longest // BLOCK + 2))
    config = EngineConfig(model=str(model_dir), device="cpu", block_size=BLOCK,
                          kv_cache_bytes=pool_blocks * block_bytes(model_dir, BLOCK),
                          max_num_seqs=MAX_SEQS, max_num_batched_tokens=w.chunk)
    return Setup(groups, costs, contended, cores, rate, longest, pool_blocks, config)
