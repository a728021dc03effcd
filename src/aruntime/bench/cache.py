"""`aruntime bench cache`: the Mooncake conversation trace against three cache set-ups.

A slice of the trace (whole multi-turn conversations, in arrival order) is replayed one request
at a time on the demo model. Each 512-token hash id becomes a block of seeded token ids at a
scaled length, so prompts that shared a hash id share those tokens, and the reuse structure is
kept while the run fits 2 cores. Set-ups: (a) no prefix cache, (b) a device-only prefix cache
whose pool is smaller than the working set, (c) the same device pool over host RAM and disk
tiers. Restore bandwidth per tier is set against memcpy and file-read bandwidth measured in the
same run. The last line is the TTFT p50 ratio of (b) over (c).

This module measures and reports; the slice is `cache_workload`'s, the set-ups' replay is
`cache_setups`'.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aruntime.bench import hardware
from aruntime.bench.cache_setups import SetupResult, replay
from aruntime.bench.cache_workload import (
    BLOCK,
    QUICK,
    TRACE,
    CacheWorkload,
    Request,
    conversation_slice,
    ideal_hit_tokens,
    make_requests,
    working_set_blocks,
)
from aruntime.bench.claim import ClaimSpec, model_ref
from aruntime.bench.model_costs import block_bytes
from aruntime.bench.probes import file_read_gbps, memcpy_gbps
from aruntime.bench.report import Report
from aruntime.bench.trace_args import add_trace_bench_arguments, bench_model
from aruntime.kv.config import KVConfig


@dataclass(frozen=True, slots=True)
class Slice:
    """The replayed requests and what sizes the set-ups' pools."""

    requests: list[Request]
    ideal: list[int]  # per request: prompt tokens an infinite cache would serve
    working_set: int  # distinct blocks
    device_blocks: int  # every set-up's device pool
    per_block: int  # KV bytes

    @property
    def prompt_tokens(self) -> int:
        return sum(len(r.prompt) for r in self.requests)

    @property
    def longest(self) -> int:
        return max(len(r.prompt) for r in self.requests)


def make_slice(model_dir: Path, w: CacheWorkload, trace: Path) -> Slice:
    cfg = json.loads((model_dir / "config.json").read_text())
    requests = make_requests(conversation_slice(trace, w, cfg["max_position_embeddings"]), w,
                             cfg["vocab_size"])
    unique_blocks = working_set_blocks(requests)
    longest = max(len(r.prompt) for r in requests)
    device_blocks = max(int(unique_blocks * w.device_fraction), -(-longest // BLOCK) + 2)
    return Slice(requests, ideal_hit_tokens(requests), unique_blocks, device_blocks,
                 block_bytes(model_dir, BLOCK))


def measure(model_dir: Path, w: CacheWorkload, s: Slice) -> tuple[list[SetupResult], float, float]:
    """The three set-ups in turn, then memcpy and file-read bandwidth (GB/s)."""
    device_bytes = s.device_blocks * s.per_block
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "kv"
        setups = [
            replay("no-cache", model_dir, s.requests, enable_prefix_caching=False,
                   kv_cache_bytes=device_bytes),
            replay("device-only", model_dir, s.requests, kv_cache_bytes=device_bytes),
            replay("tiered", model_dir, s.requests, kv_cache_bytes=device_bytes,
                   kv=KVConfig(host_bytes=int(s.working_set * w.host_fraction * s.per_block),
                               disk_dir=str(disk), disk_bytes=2 * s.working_set * s.per_block)),
        ]
        memcpy = memcpy_gbps()
        file_read = file_read_gbps(Path(tmp))
    return setups, memcpy, file_read


def run_bench(model_dir: Path, w: CacheWorkload, trace: Path = TRACE,
              json_path: Path | None = None, *, smoke: bool = False) -> dict[str, Any]:
    started = time.time()
    s = make_slice(model_dir, w, trace)
    report = Report(live=True)
    report.line(f"aruntime bench cache: {len(s.requests)} requests, {s.prompt_tokens} prompt "
                f"tokens, working set {s.working_set} blocks of {BLOCK} tokens; "
                f"device pool {s.device_blocks} blocks")
    setups, memcpy, file_read = measure(model_dir, w, s)
    for setup in setups:
        report.rows(f"{setup.name} {i} arrival_ms={r.arrival_ms} prompt={len(r.prompt)} "
                    f"cached={setup.cached_tokens[i]} ideal={s.ideal[i]} "
                    f"ttft_s={setup.ttft_s[i]:.5f}" for i, r in enumerate(s.requests))
    by = {setup.name: setup for setup in setups}
    tiered, device = by["tiered"], by["device-only"]
    gbps = {t: (b / secs / 1e9 if secs else 0.0) for t, (secs, b) in tiered.restore.items()}
    ratio = device.ttft_p50 / tiered.ttft_p50
    ideal_rate = sum(s.ideal) / s.prompt_tokens
    report.lines(figures(s, setups, tiered, gbps, ideal_rate))
    report.line(f"memcpy: {memcpy:.2f} GB/s; file read (page cache): {file_read:.2f} GB/s")
    metrics: dict[str, float | int | str] = {
        "hit_rate": round(tiered.hit_rate, 4), "ideal_hit_rate": round(ideal_rate, 4),
        "hit_rate_device_only": round(device.hit_rate, 4), "ttft_p50_ratio": round(ratio, 3),
        "ttft_p90_ms": round(tiered.ttft_p90 * 1e3, 3),
        "host_restore_gbps": round(gbps.get("host", 0.0), 3),
        "disk_restore_gbps": round(gbps.get("disk", 0.0), 3),
        "memcpy_gbps": round(memcpy, 3), "file_read_gbps": round(file_read, 3),
        "no_cache_ttft_p50_ms": round(by["no-cache"].ttft_p50 * 1e3, 3)}
    claim = ClaimSpec(
        statement=(f"On a {len(s.requests)}-request slice of the Mooncake conversation trace, "
                   f"KV tiers (host RAM + disk) under a device pool of {w.device_fraction:.0%} "
                   f"of the working set give {ratio:.2f}x lower median TTFT than the "
                   f"device-only prefix cache"),
        metric="ttft_p50", value=round(tiered.ttft_p50 * 1e3, 3), unit="ms",
        direction="lower-is-better", baseline_name="device-only prefix cache, same device pool",
        baseline_value=round(device.ttft_p50 * 1e3, 3), metrics=metrics,
        model=model_ref(model_dir), hardware=hardware.summary(hardware.describe("cpu")),
        workload=w.describe(len(s.requests)), precision="fp32", context=s.longest,
        concurrency=1, seed=w.seed, duration_s=round(time.time() - started, 3), percentile="p50")
    return report.finish(f"ttft p50 ratio device-only / tiered: {ratio:.2f}", claim, json_path,
                         smoke=smoke).record


def figures(s: Slice, setups: list[SetupResult], tiered: SetupResult, gbps: dict[str, float],
            ideal_rate: float) -> list[str]:
    """The set-ups' table, the ideal hit rate and the tiered set-up's restores."""
    lines = [f"{'setup':<12} {'hit rate':>8} {'ttft p50 ms':>12} {'ttft p90 ms':>12} {'req/s':>7}"]
    lines += [f"{x.name:<12} {x.hit_rate:>8.1%} {x.ttft_p50 * 1e3:>12.1f} "
              f"{x.ttft_p90 * 1e3:>12.1f} {len(s.requests) / x.wall_s:>7.2f}" for x in setups]
    lines.append(f"ideal hit rate (infinite cache): {ideal_rate:.1%}")
    lines += [f"restore from {tier}: {nbytes / 1e6:.1f} MB in {secs * 1e3:.1f} ms "
              f"= {gbps[tier]:.2f} GB/s" for tier, (secs, nbytes) in tiered.restore.items()]
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trace_bench_arguments(parser, "a smaller slice (about a minute)")


def run(args: argparse.Namespace) -> int:
    run_bench(bench_model(args), QUICK if args.quick else CacheWorkload(), args.trace, args.json,
              smoke=args.quick)
    return 0
