"""`aruntime bench cache`: the Mooncake conversation trace against three cache set-ups.

A slice of the trace (whole multi-turn conversations, in arrival order) is replayed one request
at a time on the demo model. Each 512-token hash id becomes a block of seeded token ids at a
scaled length, so prompts that shared a hash id share those tokens, and the reuse structure is
kept while the run fits 2 cores. Set-ups: (a) no prefix cache, (b) a device-only prefix cache
whose pool is smaller than the working set, (c) the same device pool over host RAM and disk
tiers. Restore bandwidth per tier is set against memcpy and file-read bandwidth measured in the
same run. The last line is the TTFT p50 ratio of (b) over (c).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aruntime.bench import hardware
from aruntime.bench.claim import build_claim, model_ref, write_claim
from aruntime.bench.engine import block_bytes
from aruntime.bench.stats import p90
from aruntime.engine.config import EngineConfig
from aruntime.engine.demo import ensure_demo_model
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.config import KVConfig
from aruntime.kv.keys import KeyScheme, prefix_keys

TRACE = (Path(__file__).resolve().parents[4] / "shared" / "traces"
         / "mooncake_conversation_trace.jsonl")
BLOCK = 32  # tokens per KV block: larger blocks amortise the per-block cost of a restore


@dataclass(frozen=True)
class CacheWorkload:
    conversations: int = 32  # whole conversations of >= min_turns turns, first by arrival
    min_turns: int = 2
    tokens_per_hash: int = 64  # a 512-token hash block becomes this many tokens (1/8 scale)
    max_output: int = 4  # output lengths scaled by the same 1/8, clipped to [1, max_output]
    device_fraction: float = 0.15  # device pool, as a share of the slice's working set
    host_fraction: float = 0.5  # host tier, likewise; the disk tier takes the rest
    seed: int = 0


QUICK = CacheWorkload(conversations=12)


@dataclass
class Request:
    arrival_ms: int
    prompt: list[int]
    output_tokens: int


def conversation_slice(trace: Path, w: CacheWorkload, max_tokens: int) -> list[dict[str, Any]]:
    """Whole conversations (turns share their first non-system hash id), first by arrival,
    among those whose every turn fits `max_tokens` at the workload's scale."""
    rows = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    turns: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        turns[row["hash_ids"][1] if len(row["hash_ids"]) > 1 else -1 - i].append(i)
    scale = 512 // w.tokens_per_hash
    fits = [idx for idx in turns.values() if len(idx) >= w.min_turns and all(
        -(-rows[i]["input_length"] // scale) + w.max_output < max_tokens for i in idx)]
    chosen = fits[:w.conversations]
    return [rows[i] for i in sorted(i for idx in chosen for i in idx)]


def make_requests(rows: list[dict[str, Any]], w: CacheWorkload, vocab: int) -> list[Request]:
    blocks: dict[int, list[int]] = {}

    def block(h: int) -> list[int]:
        if h not in blocks:
            rng = random.Random(f"{w.seed}:{h}")
            blocks[h] = [rng.randrange(100, vocab) for _ in range(w.tokens_per_hash)]
        return blocks[h]

    scale = 512 // w.tokens_per_hash
    out = []
    for row in rows:
        tokens = [t for h in row["hash_ids"] for t in block(h)]
        length = max(1, min(len(tokens), -(-row["input_length"] // scale)))
        outputs = max(1, min(w.max_output, row["output_length"] // scale))
        out.append(Request(row["timestamp"], tokens[:length], outputs))
    return out


def ideal_hit_tokens(requests: list[Request]) -> list[int]:
    """Prefix hits with an infinite cache: full blocks seen before, as the engine counts them
    (at least one prompt token is always computed)."""
    seen: set[bytes] = set()
    scheme = KeyScheme(BLOCK, "ideal")
    hits = []
    for r in requests:
        keys = prefix_keys(scheme.root(), r.prompt, BLOCK)
        usable = (len(r.prompt) - 1) // BLOCK
        n = 0
        while n < usable and keys[n] in seen:
            n += 1
        hits.append(n * BLOCK)
        seen.update(keys)
    return hits


@dataclass
class SetupResult:
    name: str
    ttft_s: list[float]
    cached_tokens: list[int]
    prompt_tokens: int
    output_tokens: int
    wall_s: float
    restore: dict[str, tuple[float, int]]  # tier -> (seconds, bytes)

    @property
    def hit_rate(self) -> float:
        return sum(self.cached_tokens) / self.prompt_tokens

    @property
    def ttft_p50(self) -> float:
        return statistics.median(self.ttft_s)

    @property
    def ttft_p90(self) -> float:
        return p90(self.ttft_s)


def replay(name: str, model_dir: Path, requests: list[Request], **config: Any) -> SetupResult:
    engine = LLMEngine(EngineConfig(model=str(model_dir), block_size=BLOCK, **config))
    ttft, cached = [], []
    start = time.perf_counter()
    for i, r in enumerate(requests):
        params = SamplingParams(max_tokens=r.output_tokens, temperature=0.0, ignore_eos=True)
        t0 = time.perf_counter()
        engine.add_request(f"{name}-{i}", r.prompt, params)
        first = None
        while engine.has_unfinished_requests():
            for out in engine.step():
                if first is None:
                    first = time.perf_counter() - t0
                    cached.append(out.num_cached_tokens)
        ttft.append(first or 0.0)
    wall = time.perf_counter() - start
    restore = {}
    if engine.kv is not None:
        engine.kv.tiers.flush()
        restore = {t: (engine.kv.restore_seconds[t], engine.kv.restore_bytes[t])
                   for t in engine.kv.restore_seconds}
        engine.kv.close()
    return SetupResult(name, ttft, cached, sum(len(r.prompt) for r in requests),
                       sum(r.output_tokens for r in requests), wall, restore)


def memcpy_gbps(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def file_read_gbps(directory: Path, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Reading a file that sits in the page cache, as a just-demoted block does."""
    path = directory / "read-probe.bin"
    path.write_bytes(os.urandom(1 << 20) * (nbytes >> 20))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        path.read_bytes()
        times.append(time.perf_counter() - t0)
    path.unlink()
    return nbytes / statistics.median(times) / 1e9


def run_bench(model_dir: Path, w: CacheWorkload, trace: Path = TRACE,
              json_path: Path | None = None, *, smoke: bool = False) -> dict[str, Any]:
    started = time.time()
    cfg = json.loads((model_dir / "config.json").read_text())
    requests = make_requests(conversation_slice(trace, w, cfg["max_position_embeddings"]), w,
                             cfg["vocab_size"])
    ideal = ideal_hit_tokens(requests)
    prompt_tokens = sum(len(r.prompt) for r in requests)
    unique_blocks = len({k for r in requests for k in prefix_keys(
        KeyScheme(BLOCK, "ws").root(), r.prompt, BLOCK)})
    longest = max(len(r.prompt) for r in requests)
    per_block = block_bytes(model_dir, BLOCK)
    device_blocks = max(int(unique_blocks * w.device_fraction), -(-longest // BLOCK) + 2)
    log: list[str] = []

    def note(line: str) -> None:
        log.append(line)
        print(line, flush=True)

    note(f"aruntime bench cache: {len(requests)} requests, {prompt_tokens} prompt tokens, "
         f"working set {unique_blocks} blocks of {BLOCK} tokens; "
         f"device pool {device_blocks} blocks")
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "kv"
        setups = [
            replay("no-cache", model_dir, requests, enable_prefix_caching=False,
                   kv_cache_bytes=device_blocks * per_block),
            replay("device-only", model_dir, requests, kv_cache_bytes=device_blocks * per_block),
            replay("tiered", model_dir, requests, kv_cache_bytes=device_blocks * per_block,
                   kv=KVConfig(host_bytes=int(unique_blocks * w.host_fraction * per_block),
                               disk_dir=str(disk), disk_bytes=2 * unique_blocks * per_block)),
        ]
        memcpy = memcpy_gbps()
        file_read = file_read_gbps(Path(tmp))
    for s in setups:
        for i, r in enumerate(requests):
            log.append(f"{s.name} {i} arrival_ms={r.arrival_ms} prompt={len(r.prompt)} "
                       f"cached={s.cached_tokens[i]} ideal={ideal[i]} ttft_s={s.ttft_s[i]:.5f}")
    ideal_rate = sum(ideal) / prompt_tokens
    by = {s.name: s for s in setups}
    tiered, device = by["tiered"], by["device-only"]
    gbps = {t: (b / s / 1e9 if s else 0.0) for t, (s, b) in tiered.restore.items()}
    ratio = device.ttft_p50 / tiered.ttft_p50
    note(f"{'setup':<12} {'hit rate':>8} {'ttft p50 ms':>12} {'ttft p90 ms':>12} {'req/s':>7}")
    for s in setups:
        note(f"{s.name:<12} {s.hit_rate:>8.1%} {s.ttft_p50 * 1e3:>12.1f} {s.ttft_p90 * 1e3:>12.1f} "
             f"{len(requests) / s.wall_s:>7.2f}")
    note(f"ideal hit rate (infinite cache): {ideal_rate:.1%}")
    for tier, (secs, nbytes) in tiered.restore.items():
        note(f"restore from {tier}: {nbytes / 1e6:.1f} MB in {secs * 1e3:.1f} ms "
             f"= {gbps[tier]:.2f} GB/s")
    note(f"memcpy: {memcpy:.2f} GB/s; file read (page cache): {file_read:.2f} GB/s")
    if smoke:
        note(SMOKE_NOTE)
    note(f"ttft p50 ratio device-only / tiered: {ratio:.2f}")
    hw = hardware.describe("cpu")
    claim = build_claim(
        statement=(f"On a {len(requests)}-request slice of the Mooncake conversation trace, "
                   f"KV tiers (host RAM + disk) under a device pool of {w.device_fraction:.0%} "
                   f"of the working set give {ratio:.2f}x lower median TTFT than the "
                   f"device-only prefix cache"),
        metric="ttft_p50", value=round(tiered.ttft_p50 * 1e3, 3), unit="ms",
        direction="lower-is-better",
        baseline_name="device-only prefix cache, same device pool",
        baseline_value=round(device.ttft_p50 * 1e3, 3),
        metrics={"hit_rate": round(tiered.hit_rate, 4), "ideal_hit_rate": round(ideal_rate, 4),
                 "hit_rate_device_only": round(device.hit_rate, 4),
                 "ttft_p50_ratio": round(ratio, 3),
                 "ttft_p90_ms": round(tiered.ttft_p90 * 1e3, 3),
                 "host_restore_gbps": round(gbps.get("host", 0.0), 3),
                 "disk_restore_gbps": round(gbps.get("disk", 0.0), 3),
                 "memcpy_gbps": round(memcpy, 3), "file_read_gbps": round(file_read, 3),
                 "no_cache_ttft_p50_ms": round(by["no-cache"].ttft_p50 * 1e3, 3)},
        model=model_ref(model_dir),
        hardware=hardware.summary(hw),
        workload=(f"Mooncake conversation trace: first {w.conversations} conversations of >= "
                  f"{w.min_turns} turns that fit the context, {len(requests)} requests in arrival "
                  f"order, one at a time; "
                  f"512-token hash blocks scaled to {w.tokens_per_hash} seeded tokens "
                  f"(seed {w.seed})"),
        precision="fp32", context=longest, concurrency=1, seed=w.seed,
        duration_s=round(time.time() - started, 3), percentile="p50", raw_log="\n".join(log))
    if json_path is not None:
        write_claim(json_path, claim, "\n".join(log))
    return claim


SMOKE_NOTE = ("smoke run (--quick): a smaller slice than the full run's, so its figures may "
              "tell another story than the claim's; no claim is written")


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
    from aruntime.errors import UsageError

    if not args.trace.is_file():
        raise UsageError(f"trace {args.trace} not found")
    if args.quick and args.json is not None:
        raise UsageError("--quick is a smoke run of a smaller slice and writes no claim; "
                         "drop --json, or --quick")
    return Path(args.model or ensure_demo_model("small"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trace_bench_arguments(parser, "a smaller slice (about a minute)")


def run(args: argparse.Namespace) -> int:
    run_bench(bench_model(args), QUICK if args.quick else CacheWorkload(), args.trace, args.json,
              smoke=args.quick)
    return 0
