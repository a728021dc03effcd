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

Heavy imports (torch, transformers, the engine) are deferred: the CLI imports this module to
build its parser.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from aruntime.bench import claim, hardware
from aruntime.bench.stats import median_of
from aruntime.engine.config import EngineConfig, ModelConfig
from aruntime.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine

# ---- workload ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    num_requests: int = 64
    seed: int = 0
    prompt_len: tuple[int, int] = (32, 512)  # uniform, inclusive
    output_len: tuple[int, int] = (16, 128)
    prefix_len: int = 1024  # TTFT probe: the prefix that is cached ...
    suffix_len: int = 16  # ... and the fresh suffix after it
    ttft_repeats: int = 5
    baseline_batch: int = 8
    rounds: int = 3  # each system runs this often, alternating; its median round counts

    def describe(self) -> str:
        return (f"{self.num_requests} requests, random token ids (seed {self.seed}), prompts "
                f"uniform {self.prompt_len[0]}-{self.prompt_len[1]}, outputs uniform "
                f"{self.output_len[0]}-{self.output_len[1]}, greedy, ignore_eos; TTFT probe "
                f"{self.prefix_len}-token cached prefix + {self.suffix_len}-token suffix; "
                f"median of {self.rounds} alternating rounds")


FULL = Workload()
# The same workload, fewer repeats: a quick run is less precise, never another measurement. (It
# used to run 24 requests, where continuous batching has less to batch: its throughput ratio
# was 2.2-2.5 against the full run's 3.3-3.7 on the same machine and hour.)
QUICK = replace(FULL, ttft_repeats=3, rounds=1)


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    prompt: list[int]
    max_tokens: int


def make_requests(w: Workload, vocab_size: int) -> tuple[list[Request], list[list[int]]]:
    """The throughput requests and the TTFT probe prompts: fill first, a warm-up probe, then
    one per repeat."""
    rng = random.Random(w.seed)
    low = 3  # keep clear of the usual special ids (pad, bos, eos)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(low, vocab_size) for _ in range(n)]

    requests = [Request(f"req-{i}", tokens(rng.randint(*w.prompt_len)), rng.randint(*w.output_len))
                for i in range(w.num_requests)]
    prefix = tokens(w.prefix_len)
    probes = [prefix + tokens(w.suffix_len) for _ in range(2 + w.ttft_repeats)]
    return requests, probes


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


# ---- model arithmetic ----------------------------------------------------------------------


def load_model_config(model_dir: Path) -> ModelConfig:
    return ModelConfig.from_hf(json.loads((model_dir / "config.json").read_text()))


def block_bytes(model_dir: Path, block_size: int) -> int:
    """fp32 KV bytes of one block of this checkpoint."""
    return load_model_config(model_dir).kv_bytes_per_token() * block_size


def projection_params(m: ModelConfig) -> int:
    """Weights of the matmuls between embedding and LM head (norms are not matmuls)."""
    q = m.num_attention_heads * m.head_dim
    kv = m.num_key_value_heads * m.head_dim
    attn = m.hidden_size * (q + 2 * kv) + q * m.hidden_size + (q + 2 * kv) * m.attention_bias
    return m.num_hidden_layers * (attn + 3 * m.hidden_size * m.intermediate_size)


def request_flops(m: ModelConfig, prompt: int, output: int, cached: int = 0) -> float:
    """Model FLOPs of one request: 2 x projection weights per position fed through the model,
    attention 4 x layers x ctx x width per position, and the LM head once per generated token.
    Positions `cached` .. prompt+output-2 are computed (the last token is never fed back)."""
    first, last = cached + 1, prompt + output - 1  # context lengths seen by those positions
    positions = last - first + 1
    ctx_sum = (first + last) * positions / 2
    width = m.num_attention_heads * m.head_dim
    return (2 * projection_params(m) * positions
            + 4 * m.num_hidden_layers * width * ctx_sum
            + 2 * m.vocab_size * m.hidden_size * output)


def kv_budget(m: ModelConfig, lengths: list[int], block_size: int = 16) -> int:
    """KV bytes for every sequence at full length at once, and a block more each: the throughput
    run should measure batching, not preemption; a bigger pool would only add to the RSS."""
    blocks = sum(math.ceil(n / block_size) + 1 for n in lengths)
    return blocks * block_size * m.kv_bytes_per_token()


# ---- timing helpers ------------------------------------------------------------------------


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(device: str, n: int = 2048, repeats: int = 7) -> float:
    """The roofline: median GFLOP/s of an n x n fp32 matmul on this device, now."""
    import torch

    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    c = torch.empty(n, n, device=device)
    times = []
    for i in range(repeats + 2):  # two warm-ups
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def peak_rss_mb() -> float:
    """This process's peak resident set so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the two runners -----------------------------------------------------------------------


@dataclass(slots=True)
class SystemRun:
    name: str
    wall_s: float
    cpu_s: float  # this process's CPU time, all threads: steadier than wall time when shared
    outputs: dict[str, list[int]]  # request id -> its own output tokens
    prefill_tokens: int  # prompt positions computed, padding included
    rows: list[dict[str, Any]]  # the per-request raw log
    cached: dict[str, int] = field(default_factory=dict)  # request id -> prompt tokens cached
    extra: dict[str, float | int] = field(default_factory=dict)

    @property
    def output_tokens(self) -> int:
        return sum(len(t) for t in self.outputs.values())

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.wall_s


def new_engine(model_dir: Path, kv_cache_bytes: int, **overrides: Any) -> LLMEngine:
    from aruntime.engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(model=str(model_dir), kv_cache_bytes=kv_cache_bytes,
                                  max_num_seqs=64, max_num_batched_tokens=2048, **overrides))


def run_aruntime(model_dir: Path, requests: list[Request], m: ModelConfig
                 ) -> tuple[SystemRun, str]:
    """All requests added at once to a fresh engine (a warm prefix cache would flatter a second
    round), `step()` until done. Returns the run and the model's revision digest."""
    engine = new_engine(model_dir, kv_budget(
        m, [len(r.prompt) + r.max_tokens for r in requests] + [64]))
    engine.generate([list(range(3, 35))], greedy(4))  # warm-up, as the baseline gets one
    preempted = engine.stats().num_preempted_total
    outputs: dict[str, list[int]] = {r.id: [] for r in requests}
    rows = {r.id: {"id": r.id, "prompt": len(r.prompt), "max_tokens": r.max_tokens}
            for r in requests}
    t0, c0 = time.perf_counter(), time.process_time()
    for r in requests:
        engine.add_request(r.id, r.prompt, greedy(r.max_tokens))
    while engine.has_unfinished_requests():
        for out in engine.step():
            now = time.perf_counter() - t0
            row = rows[out.request_id]
            outputs[out.request_id].extend(out.new_token_ids)
            if out.new_token_ids and "ttft_s" not in row:
                row["ttft_s"] = round(now, 4)
            if out.finished:
                row.update(e2e_s=round(now, 4), cached=out.num_cached_tokens,
                           finish=out.finish_reason, output=len(outputs[out.request_id]))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cached = {rid: row["cached"] for rid, row in rows.items()}
    prefill = sum(len(r.prompt) - cached[r.id] for r in requests)
    run = SystemRun("aruntime", wall, cpu, outputs, prefill, list(rows.values()), cached, {
        "preempted": engine.stats().num_preempted_total - preempted,
        "ttft_p50_s": statistics.median(row["ttft_s"] for row in rows.values()),
        "e2e_p50_s": statistics.median(row["e2e_s"] for row in rows.values()),
    })
    revision = str(engine.revision)
    del engine
    gc.collect()
    return run, revision


def first_token_s(engine: LLMEngine, request_id: str, prompt: list[int]) -> tuple[float, int]:
    """Seconds from add_request to the first output token, and the prompt tokens found cached."""
    t0 = time.perf_counter()
    engine.add_request(request_id, prompt, greedy(1))
    ttft, cached = None, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == request_id:
                if out.new_token_ids and ttft is None:
                    ttft = time.perf_counter() - t0
                cached = max(cached, out.num_cached_tokens)
    if ttft is None:
        raise RuntimeError(f"the engine finished {request_id} without a token")
    return ttft, cached


def measure_ttft(model_dir: Path, probes: list[list[int]],
                 m: ModelConfig) -> dict[bool, list[tuple[float, int]]]:
    """TTFT with prefix caching on (True) and off (False): (seconds, cached tokens) per probe.

    Both engines first run the fill prompt (it fills the cache; it warms either engine) and a
    first probe, not counted: on the cached engine it is the first prefill over a cached
    context, whose one-time costs (new kernel shapes) would otherwise weigh on a median of
    few. Then each probe (the shared prefix, a fresh suffix) runs on one engine and then the
    other, so a burst of load from elsewhere on the machine hits both sides alike."""
    kv = kv_budget(m, [len(p) + 1 for p in probes[:2]])
    engines = {caching: new_engine(model_dir, kv, enable_prefix_caching=caching)
               for caching in (True, False)}
    results: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
    for engine in engines.values():
        first_token_s(engine, "ttft-fill", probes[0])
        first_token_s(engine, "ttft-warm", probes[1])
    for i, prompt in enumerate(probes[2:]):
        for caching, engine in engines.items():
            results[caching].append(first_token_s(engine, f"ttft-{i}", prompt))
    del engines, engine
    gc.collect()
    return results


class TransformersBaseline:
    """Static batching as people run it: left-padded batches in arrival order, each decoded to
    its longest output (min_new_tokens = max_new_tokens), greedy. Loaded once, run per round."""

    def __init__(self, model_dir: Path, device: str) -> None:
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32).to(device).eval()
        if next(self.model.parameters()).dtype != torch.float32:
            raise RuntimeError("the baseline did not load in fp32")
        self.device = device
        self.pad = self.model.config.pad_token_id or 0
        self.version = transformers.__version__
        self.generate([list(range(3, 35))], 4)  # warm-up

    def generate(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts],
                           device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                            device=self.device)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      pad_token_id=self.pad)
        sync(self.device)
        return out[:, width:].tolist()

    def run(self, requests: list[Request], batch: int) -> SystemRun:
        outputs, rows, prefill = {}, [], 0
        t0, c0 = time.perf_counter(), time.process_time()
        for b in range(0, len(requests), batch):
            group = requests[b:b + batch]
            tb = time.perf_counter()
            new = self.generate([r.prompt for r in group], max(r.max_tokens for r in group))
            done = time.perf_counter()
            prefill += len(group) * max(len(r.prompt) for r in group)
            for r, tokens in zip(group, new, strict=False):
                outputs[r.id] = tokens[:r.max_tokens]
                rows.append({"id": r.id, "prompt": len(r.prompt), "output": r.max_tokens,
                             "batch": b // batch, "batch_new_tokens": len(tokens),
                             "batch_s": round(done - tb, 4), "e2e_s": round(done - t0, 4)})
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return SystemRun(f"transformers {self.version} generate, static batch {batch}",
                         wall, cpu, outputs, prefill, rows)


# ---- the benchmark -------------------------------------------------------------------------


@dataclass(slots=True)
class BenchResult:
    record: dict[str, Any]  # the claim record
    report: str  # what was printed on stdout, ratio last
    raw_log: str  # per-request rows and readings, then the report; its sha256 is in the record


def run_bench(model_dir: Path, workload: Workload, *, json_path: Path | None = None,
              matmul_n: int = 2048, out: TextIO | None = None,
              progress: TextIO | None = None) -> BenchResult:
    """Measure everything in one run, print the report (to `out`, default stdout; progress notes
    to stderr) and write the claim record if asked."""
    from aruntime.engine.runner import resolve_device

    def note(msg: str) -> None:
        print(f"[bench] {msg}", file=progress or sys.stderr, flush=True)

    started, start_rss = time.perf_counter(), peak_rss_mb()
    m = load_model_config(model_dir)
    requests, probes = make_requests(workload, m.vocab_size)
    device = str(resolve_device(EngineConfig(model=str(model_dir)).device))  # the engine's pick

    note(f"roofline: {matmul_n}x{matmul_n} fp32 matmul")
    rooflines = [matmul_gflops(device, matmul_n)]
    note(f"aruntime: {len(requests)} requests, round 1 of {workload.rounds}")
    first, revision = run_aruntime(model_dir, requests, m)
    model_name = f"{model_dir.name}@{revision}"
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
    duration = time.perf_counter() - started
    # The machine is shared and noisy: the median round of each system counts (the lower
    # median when the count is even), and every round is in the raw log.
    ours = median_of([o for o, _ in rounds], lambda r: r.wall_s)
    base = median_of([b for _, b in rounds], lambda r: r.wall_s)

    # -- figures
    roofline = max(rooflines)

    def mfu(run: SystemRun) -> float:
        flops = sum(request_flops(m, len(r.prompt), r.max_tokens, run.cached.get(r.id, 0))
                    for r in requests)
        return flops / run.wall_s / 1e9 / roofline

    value, baseline = round(ours.tok_s, 2), round(base.tok_s, 2)
    ratio = value / baseline  # exactly as the claim record computes it
    cached_ms = statistics.median(t for t, _ in ttft[True]) * 1e3
    uncached_ms = statistics.median(t for t, _ in ttft[False]) * 1e3
    hits = min(c for _, c in ttft[True])
    agree = sum(ours.outputs[r.id] == base.outputs[r.id] for r in requests)
    metrics: dict[str, float | int | str] = {
        "baseline_tok_s": baseline,
        "ttft_cached_speedup": round(uncached_ms / cached_ms, 3),
        "ttft_cached_ms": round(cached_ms, 2),
        "ttft_uncached_ms": round(uncached_ms, 2),
        "ttft_cached_prefix_hit_tokens": hits,
        "mfu": round(mfu(ours), 4),
        "baseline_mfu": round(mfu(base), 4),
        "matmul_gflops": round(roofline, 1),
        "peak_rss_mb": round(rss["throughput_phase"], 1),
        "wall_s": round(ours.wall_s, 3),
        "baseline_wall_s": round(base.wall_s, 3),
        "cpu_s": round(ours.cpu_s, 3),
        "baseline_cpu_s": round(base.cpu_s, 3),
        "output_tokens": ours.output_tokens,
        "prefill_tokens_computed": ours.prefill_tokens,
        "baseline_prefill_tokens_computed": base.prefill_tokens,
        "preempted": ours.extra["preempted"],
        "ttft_p50_s": round(ours.extra["ttft_p50_s"], 3),
        "e2e_p50_s": round(ours.extra["e2e_p50_s"], 3),
        "greedy_agreement": round(agree / len(requests), 4),
        "rounds": len(rounds),
    }
    hw = hardware.describe(device)

    # -- report: the table, the other figures, the ratio last
    lines = [f"aruntime bench engine: {model_name}", f"hardware: {hardware.summary(hw)}",
             f"workload: {workload.describe()}", "",
             f"{'system':<44}{'wall s':>8}{'cpu s':>8}{'out tokens':>12}{'out tok/s':>11}"
             f"{'prefill computed':>18}{'MFU':>7}"]
    for run in (ours, base):
        lines.append(f"{run.name:<44}{run.wall_s:>8.2f}{run.cpu_s:>8.2f}{run.output_tokens:>12}"
                     f"{run.tok_s:>11.1f}{run.prefill_tokens:>18}{mfu(run):>7.1%}")
    per_round = [" / ".join(f"{r.wall_s:.1f}" for r in runs) for runs in zip(*rounds, strict=False)]
    facts = [
        ("wall s per round (median counts)",
         f"aruntime {per_round[0]}; transformers {per_round[1]}"),
        (f"TTFT, {workload.prefix_len}-token prefix cached",
         f"{cached_ms:.1f} ms (median of {len(ttft[True])}; {hits} prompt tokens from the cache)"),
        ("TTFT, prefix caching off", f"{uncached_ms:.1f} ms (median of {len(ttft[False])})"),
        ("TTFT cached speedup", f"{uncached_ms / cached_ms:.2f}x"),
        (f"roofline, fp32 {matmul_n}x{matmul_n} matmul", f"{roofline:.1f} GFLOP/s"),
        ("aruntime peak RSS", f"{rss['throughput_phase']:.0f} MB (its throughput phase; the "
         "baseline loads later)"),
        ("aruntime preempted sequences", str(ours.extra["preempted"])),
        ("greedy outputs equal to the baseline's", f"{agree}/{len(requests)} requests"),
        ("duration", f"{duration:.1f} s"),
    ]
    lines += [""] + [f"{label + ':':<40}{text}" for label, text in facts]
    if json_path is not None:
        lines.append(f"claim record: {json_path} (raw log: {json_path}.log)")
    lines.append(f"throughput ratio vs transformers: {ratio:.2f}")
    report = "\n".join(lines) + "\n"

    raw = []
    for i, pair in enumerate(rounds, 1):
        for run in pair:
            raw.append(f"# round {i}, {run.name}: wall {run.wall_s:.3f} s, cpu {run.cpu_s:.3f} s, "
                       f"{run.output_tokens} tokens, {run.tok_s:.2f} tok/s"
                       + (" (median)" if run is ours or run is base else ""))
            raw += map(json.dumps, run.rows)
    raw_log = "\n".join(
        [*raw,
         f"# ttft_s {json.dumps({'cached': ttft[True], 'uncached': ttft[False]})}",
         f"# matmul_gflops {json.dumps(rooflines)}", f"# peak_rss_mb {json.dumps(rss)}",
         f"# hardware {json.dumps(hw)}", f"# metrics {json.dumps(metrics)}", "", report])
    record = claim.build_claim(
        statement=(f"ARuntime's offline output throughput is {ratio:.2f}x that of {base.name} "
                   f"on the same {model_dir.name} weights, measured in the same run"),
        metric="output_throughput", value=value, unit="tok/s", direction="higher-is-better",
        baseline_name=base.name,
        baseline_value=baseline, metrics=metrics, model=model_name,
        hardware=hardware.summary(hw), workload=workload.describe(), precision="fp32",
        context=max(max(len(r.prompt) + r.max_tokens for r in requests), len(probes[0]) + 1),
        concurrency=len(requests), seed=workload.seed, duration_s=round(duration, 2),
        percentile="p50", raw_log=raw_log)  # the median round of each system counts
    if json_path is not None:
        claim.write_claim(json_path, record, raw_log)
    out = out or sys.stdout
    out.write(report)
    out.flush()
    return BenchResult(record, report, raw_log)


# ---- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"the same workload, {QUICK.rounds} round instead of {FULL.rounds} "
                             f"and {QUICK.ttft_repeats} TTFT probes instead of "
                             f"{FULL.ttft_repeats}")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="write the claim record here (and the raw log to FILE.log)")
    parser.add_argument("--model", type=Path, metavar="DIR",
                        help="a Llama-family checkpoint directory (default: the small demo model)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from aruntime.errors import UsageError

    workload = replace(QUICK if args.quick else FULL, seed=args.seed)
    if args.json is not None and args.json.is_dir():
        raise UsageError(f"--json {args.json} is a directory; give a file name")
    if args.model is None:
        from aruntime.engine.demo import ensure_demo_model

        model_dir = ensure_demo_model("small")
    else:
        model_dir = args.model
        if not (model_dir / "config.json").is_file():
            raise UsageError(f"--model {model_dir}: no config.json there")
    try:
        limit = load_model_config(model_dir).max_position_embeddings
    except ValueError as exc:  # unparsable JSON or a ModelConfigError
        raise UsageError(f"--model {model_dir}: {exc}") from None
    need = max(workload.prefix_len + workload.suffix_len + 1,
               workload.prompt_len[1] + workload.output_len[1])
    if limit < need:
        raise UsageError(f"--model {model_dir}: context {limit} is shorter than the {need} "
                         "tokens the workload needs")
    run_bench(model_dir, workload, json_path=args.json)
    return 0
