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
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from aruntime.bench import hardware
from aruntime.bench.cache import (
    SMOKE_NOTE,
    TRACE,
    CacheWorkload,
    add_trace_bench_arguments,
    bench_model,
    conversation_slice,
    make_requests,
)
from aruntime.bench.claim import build_claim, model_ref, write_claim
from aruntime.bench.engine import block_bytes
from aruntime.bench.stats import p90
from aruntime.engine.config import EngineConfig
from aruntime.engine.core_proc import SWITCH_INTERVAL_S
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.keys import KeyScheme, prefix_keys
from aruntime.sim.costs import Costs

BLOCK = 16
MAX_SEQS = 16
POLICIES = ("kv", "round-robin", "random")


@dataclass(frozen=True)
class RouteWorkload:
    groups: int = 32  # conversations (128 requests: a p90 over 96 warm turns, not 48)
    turns: int = 4  # requests per group (its first turns)
    workers: int = 4
    tokens_per_hash: int = 8  # a 512-token hash id becomes 8 tokens (1/64 scale)
    max_prompt: int = 640  # conversations whose turns all fit
    min_prompt: int = 128  # ... and whose first turn has this much context to share
    extends: float = 0.5  # ... and whose every turn repeats this share of the last one's blocks
    max_output: int = 4
    pool_share: float = 1.25  # device pool of each worker, in its share (groups/workers) of groups
    load: float = 0.9  # offered load, as a share of the cores' capacity with nothing cached
    chunk: int = 256  # prefill tokens per engine step: a short prompt waits for one chunk at most
    seed: int = 0
    repeats: int = 3  # runs of each policy, interleaved; its figures are their medians


QUICK = RouteWorkload(groups=8, turns=3, repeats=1)


@dataclass
class Sent:
    group: int
    turn: int
    prompt: list[int]
    output_tokens: int
    at: float = 0.0  # scheduled arrival, seconds from the start


class Lone(NamedTuple):
    """A request with nothing else in flight, as the serving path ran it."""

    new: int  # prompt tokens computed
    cached: int  # ... and reused
    ttft_s: float  # from its send
    engine_s: float  # from its arrival at the engine to its first token there


class LoneStep(NamedTuple):
    """A decode step of a request with nothing else in flight: the time between two of its
    tokens as they streamed out, which is the serving loop's whole step."""

    context: int  # tokens the step's sequence attends to
    seconds: float


@dataclass
class WarmUp:
    """What a pool's warm-up measured, for the simulator to run as the serving path does."""

    lone: list[Lone] = field(default_factory=list)  # one request in flight, back to back
    woken: list[Lone] = field(default_factory=list)  # ... each after its engine sat idle
    decode_steps: list[LoneStep] = field(default_factory=list)  # a lone request's
    # cold prompts sent at once to 1, 2, ... workers: until the last first token, for each count
    together_s: list[float] = field(default_factory=list)


@dataclass
class PolicyResult:
    """Per request, in the order they were sent."""

    policy: str
    requests: list[Sent]
    ttft_s: list[float]
    sent_s: list[float]  # when each request was sent (after its previous turn came back)
    predicted: list[int]  # cached tokens, as the router predicted them
    used: list[int]  # ... and as the engine reused them
    workers: list[str]
    warm_up: WarmUp = field(default_factory=WarmUp)  # its pool's, before the run

    @property
    def hit_rate(self) -> float:
        return sum(self.used) / sum(len(s.prompt) for s in self.requests)

    @property
    def warm_ttft_s(self) -> list[float]:
        """After each group's first turn, which is cold under every policy."""
        return [t for t, s in zip(self.ttft_s, self.requests, strict=True) if s.turn > 0]

    @property
    def ttft_p50(self) -> float:
        return statistics.median(self.warm_ttft_s)

    @property
    def ttft_p90(self) -> float:
        return p90(self.warm_ttft_s)

    @property
    def ttft_p50_all(self) -> float:
        return statistics.median(self.ttft_s)

    @property
    def ttft_p90_all(self) -> float:
        return p90(self.ttft_s)


class _Median:
    """A PolicyRuns figure: the median of the same-named PolicyResult figure over its runs."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, runs: PolicyRuns, owner: type | None = None) -> float:
        return statistics.median(getattr(r, self.name) for r in runs.runs)


@dataclass
class PolicyRuns:
    """A policy's runs of the same workload and the simulator's TTFTs for each. Its figures are
    medians over the runs: on a shared machine near saturation one run's p50 moves by tens of
    percent with the machine's noise."""

    policy: str
    runs: list[PolicyResult] = field(default_factory=list)
    simulated: list[list[float]] = field(default_factory=list)  # per run, per request

    hit_rate = _Median()
    ttft_p50 = _Median()
    ttft_p90 = _Median()
    ttft_p50_all = _Median()
    ttft_p90_all = _Median()

    @property
    def audit_error(self) -> float:
        """Over every request of every run."""
        return sum(abs(p - u) for r in self.runs for p, u in zip(r.predicted, r.used,
                                                                 strict=True)) / max(
            1, sum(sum(r.used) for r in self.runs))

    @property
    def sim_p50(self) -> float:
        return statistics.median(statistics.median(t) for t in self.simulated)

    @property
    def sim_error(self) -> float:
        return abs(self.sim_p50 - self.ttft_p50_all) / self.ttft_p50_all


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def make_groups(w: RouteWorkload, vocab: int, trace: Path = TRACE) -> list[list[Sent]]:
    """Each group's first `turns` turns, in order."""
    cw = CacheWorkload(conversations=10_000, min_turns=w.turns,
                       tokens_per_hash=w.tokens_per_hash, max_output=w.max_output, seed=w.seed)
    rows = conversation_slice(trace, cw, w.max_prompt)
    by_group: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_group.setdefault(row["hash_ids"][1], []).append(row)
    scale = 512 // w.tokens_per_hash

    def shared_prefix(turns: list[dict[str, Any]]) -> bool:
        return -(-turns[0]["input_length"] // scale) >= w.min_prompt and all(
            _common(a["hash_ids"], b["hash_ids"]) >= w.extends * len(a["hash_ids"])
            for a, b in itertools.pairwise(turns))

    chosen = [turns[:w.turns] for turns in by_group.values()
              if shared_prefix(turns[:w.turns])][:w.groups]
    if len(chosen) < w.groups:
        raise ValueError(f"the trace has only {len(chosen)} conversations of {w.turns} turns "
                         f"from {w.min_prompt} to {w.max_prompt} tokens")
    groups = []
    for g, turns in enumerate(chosen):
        reqs = make_requests(turns, cw, vocab)
        groups.append([Sent(g, k, r.prompt, r.output_tokens) for k, r in enumerate(reqs)])
    return groups


def schedule(w: RouteWorkload, groups: list[list[Sent]], costs: Costs, cores: float) -> float:
    """Set every request's `at`: Poisson arrivals at `load` x the cold capacity of `cores` (the
    prefill of their prompts, the work a cache can save), over a seeded random interleaving of
    the conversations that keeps each one's turns in order, so new conversations keep starting
    while others go on. Returns the rate (req/s)."""
    sent = [s for turns in groups for s in turns]
    rate = w.load * cores / statistics.fmean(costs.prompt_s(len(s.prompt), w.chunk) for s in sent)
    rng = random.Random(w.seed)
    left = [list(reversed(turns)) for turns in groups]
    t = 0.0
    while any(left):  # draw the next turn from a conversation weighted by the turns it has left
        turns = rng.choices([x for x in left if x], weights=[len(x) for x in left if x])[0]
        t += rng.expovariate(rate)
        turns.pop().at = t
    return rate


class Streamed(NamedTuple):
    ttft_s: float
    cached: int  # prompt tokens reused
    engine_s: float  # of the TTFT, from the request's arrival at the engine to its first token
    gaps_s: list[float]  # between one streamed token and the next


async def _send(client: Any, rid: str, prompt: list[int], max_tokens: int = 1) -> Streamed:
    """Stream a request to its end."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    ttft, cached, engine, last, gaps = 0.0, 0, 0.0, 0.0, []
    async for out in client.generate(rid, prompt, params):
        now = time.perf_counter()
        if not ttft:
            ttft, cached = now - t0, out.num_cached_tokens
            engine = (out.first_token_time - out.arrival_time
                      if out.first_token_time and out.arrival_time else ttft)
        elif out.new_token_ids:
            gaps.append(now - last)
        last = now
    return Streamed(ttft, cached, engine, gaps)


PROBE_TOKENS = 16  # a length the calibration measures, so its fit is close there
HIT_CONTEXT = 384  # ... and a warm turn's shape: that many tokens cached before it
DECODE_TOKENS = 8  # a lone warm turn streams this many, to time the serving loop's steps
IDLE_S = 0.1  # an engine idles this long before a woken probe, as between a worker's requests
BUSY_TOKENS = 256
BUSY_ROUNDS = 3


def busy_tokens(longest: int) -> int:
    """The prompts that keep workers busy together: as long as the workload's longest, up to
    BUSY_TOKENS."""
    return min(BUSY_TOKENS, longest)


async def _warm_up(pool: Any, longest: int) -> WarmUp:
    """A long prompt of its own on every worker (first steps pay for allocations); then lone
    requests one at a time, short cold ones and warm turns after a cached prefix, whose TTFTs
    set against the calibration tell what the serving path adds to an engine step; the same
    warm turns after the engine sat idle, which tell what waking it costs; and a warm turn that
    decodes, whose tokens' spacing tells what the serving loop adds between steps. Then cold
    prompts sent at once to 1, 2, ... workers, one each: the time until the last first token
    (the work over the rate it was done at, however the OS took turns) tells what the cores
    are worth to the serving path with that many busy."""
    workers = list(pool.workers.values())
    out = WarmUp()
    context = min(HIT_CONTEXT, longest - PROBE_TOKENS) // BLOCK * BLOCK

    def lone(sent: Streamed, prompt: list[int]) -> Lone:
        return Lone(len(prompt) - sent.cached, sent.cached, sent.ttft_s, sent.engine_s)

    for i, worker in enumerate(workers):
        await _send(worker, f"warm-{i}", [3 + i] * longest)
        for k in range(3):  # a token of its own per prompt, or the warm prompt's prefix
            cold = [50 + 4 * i + k] * PROBE_TOKENS
            out.lone.append(lone(await _send(worker, f"probe-{i}-{k}", cold), cold))
            warm = [3 + i] * context + cold
            out.lone.append(lone(await _send(worker, f"hit-{i}-{k}", warm), warm))
        for k in range(3):
            await asyncio.sleep(IDLE_S)  # the engine's idle time, not a synchronisation
            warm = [3 + i] * context + [70 + 4 * i + k] * PROBE_TOKENS
            out.woken.append(lone(await _send(worker, f"woken-{i}-{k}", warm), warm))
        decoded = await _send(worker, f"decode-{i}", [3 + i] * context + [49] * PROBE_TOKENS,
                              DECODE_TOKENS)
        out.decode_steps += [LoneStep(context + PROBE_TOKENS + k, gap)
                             for k, gap in enumerate(decoded.gaps_s, 1)]
    n, salt = busy_tokens(longest), 90
    for busy in range(1, len(workers) + 1):
        rounds = []
        for _ in range(BUSY_ROUNDS):
            prompts = [[salt + i] * n for i in range(busy)]
            sent = await asyncio.gather(*(_send(workers[i], f"busy-{salt + i}", prompt)
                                          for i, prompt in enumerate(prompts)))
            salt += busy
            rounds.append(max(x.ttft_s for x in sent))
            if busy == 1:
                out.lone.append(lone(sent[0], prompts[0]))
        out.together_s.append(statistics.median(rounds))
    return out


async def _drive(pool: Any, policy: str, groups: list[list[Sent]]) -> PolicyResult:
    rows: list[tuple[Sent, str, float, float, int]] = []
    start = time.perf_counter()

    async def user(turns: list[Sent]) -> None:
        for s in turns:  # a turn goes out once its time came and the last answer is back
            delay = start + s.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the load generator's clock, not a synchronisation
            rid = f"{policy}-{s.group}-{s.turn}"
            sent = time.perf_counter() - start
            out = await _send(pool, rid, s.prompt, s.output_tokens)
            rows.append((s, rid, sent, out.ttft_s, out.cached))

    await asyncio.gather(*(user(turns) for turns in groups))
    rows.sort(key=lambda r: r[2])
    routes = [pool.route_of(rid) for _, rid, *_ in rows]
    return PolicyResult(
        policy, [r[0] for r in rows], [r[3] for r in rows], [r[2] for r in rows],
        [route.predicted_cached_tokens for route in routes], [r[4] for r in rows],
        [route.worker for route in routes])


def run_policy(config: EngineConfig, policy: str, groups: list[list[Sent]],
               w: RouteWorkload, longest: int) -> PolicyResult:
    from aruntime.cluster.pool import WorkerPool

    pool = WorkerPool(config, w.workers, policy, seed=w.seed)
    pool.start()
    try:
        async def main() -> PolicyResult:
            warm_up = await _warm_up(pool, longest)
            result = await _drive(pool, policy, groups)
            result.warm_up = warm_up
            await pool.shutdown()
            return result
        return asyncio.run(main())
    finally:
        pool.close()


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


def calibrate_workers(model_dir: Path, w: RouteWorkload, note: Any) -> tuple[Costs, float]:
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
    cores = hw["usable_cores"]
    log: list[str] = []

    def note(line: str) -> None:
        log.append(line)
        print(line, flush=True)

    cfg = json.loads((model_dir / "config.json").read_text())
    groups = make_groups(w, cfg["vocab_size"], trace)
    if calibration is None:
        note("calibrating the engine at one thread (the workers' setting)")
        calibration = calibrate_workers(model_dir, w, note)
    costs, contended = calibration
    rate = schedule(w, groups, costs, min(contended, cores))
    longest = max(len(s.prompt) for turns in groups for s in turns)
    pool_blocks = int(w.pool_share * w.groups / w.workers * (longest // BLOCK + 2))
    config = EngineConfig(model=str(model_dir), device="cpu", block_size=BLOCK,
                          kv_cache_bytes=pool_blocks * block_bytes(model_dir, BLOCK),
                          max_num_seqs=MAX_SEQS, max_num_batched_tokens=w.chunk)
    n = w.groups * w.turns
    note(f"aruntime bench route: {w.groups} groups x {w.turns} turns = {n} requests on "
         f"{w.workers} workers sharing {cores} cores; longest prompt {longest} tokens; "
         f"{pool_blocks} KV blocks of {BLOCK} tokens per worker; Poisson arrivals at "
         f"{rate:.2f} req/s ({w.load:.0%} of the cores' capacity with nothing cached)")
    metrics_extra: dict[str, Any] = {"arrival_rate_rps": round(rate, 3),
                                     "contended_cores": round(contended, 3)}
    results = {p: PolicyRuns(p) for p in POLICIES}
    for k in range(w.repeats):  # interleaved, so the machine's drift falls on every policy
        for p in POLICIES:
            r = run_policy(config, p, groups, w, longest)
            results[p].runs.append(r)
            note(f"run {k + 1}/{w.repeats} {p}: hit rate {r.hit_rate:.1%}, ttft p50 "
                 f"{r.ttft_p50 * 1e3:.1f} ms, p90 {r.ttft_p90 * 1e3:.1f} ms, p50 all "
                 f"{r.ttft_p50_all * 1e3:.1f} ms")
    runs = [r for rs in results.values() for r in rs.runs]
    pooled = WarmUp(*([x for r in runs for x in getattr(r.warm_up, name)]
                      for name in ("lone", "woken", "decode_steps")))
    costs, factor, loop = serving_costs(costs, pooled, w.chunk)
    note(f"{len(pooled.lone)} lone requests, {len(pooled.woken)} after their engine idled "
         f"{IDLE_S * 1e3:.0f} ms and {len(pooled.decode_steps)} decode steps through the "
         f"serving path: TTFT = {factor:.3f} x the calibration's engine steps, each "
         f"{loop * 1e3:.2f} ms longer for the serving loop, the first after idling "
         f"{costs.wake_s * 1e3:.2f} ms longer still, + {costs.request_s * 1e3:.1f} ms of hops")
    metrics_extra["serving_step_factor"] = round(factor, 4)
    metrics_extra["serving_loop_ms"] = round(loop * 1e3, 3)
    metrics_extra["wake_ms"] = round(costs.wake_s * 1e3, 3)
    together = [statistics.median(r.warm_up.together_s[b] for r in runs)
                for b in range(w.workers)]
    worth = tuple(min(b, b * together[0] / t) for b, t in enumerate(together, 1))
    note(f"cold {busy_tokens(longest)}-token prompts sent at once to 1..{w.workers} workers: "
         f"last first token after {', '.join(f'{t * 1e3:.0f}' for t in together)} ms; the cores "
         f"worth "
         f"{', '.join(f'{x:.2f}' for x in worth)} workers to the serving path "
         f"({contended:.2f} to {w.workers} engines alone)")
    metrics_extra["cores_worth_all_busy"] = round(worth[-1], 3)
    for rs in results.values():
        for k, r in enumerate(rs.runs, 1):
            sim = simulate(r, costs, w, config, cores, worth)
            rs.simulated.append(sim)
            real, predicted = r.ttft_p50_all, statistics.median(sim)
            note(f"run {k}/{w.repeats} {r.policy}: sim ttft p50 {predicted * 1e3:.1f} ms against "
                 f"{real * 1e3:.1f} real ({(predicted - real) / real:+.1%})")
            for i, t in enumerate(r.ttft_s):
                log.append(f"{r.policy} run={k} {i} sent_s={r.sent_s[i]:.4f} "
                           f"worker={r.workers[i]} predicted={r.predicted[i]} used={r.used[i]} "
                           f"ttft_s={t:.5f} sim_ttft_s={sim[i]:.5f}")
    note(f"medians over {w.repeats} run(s) of each policy; hit rate: all requests; ttft: after "
         "each group's first (cold) turn, which every policy must compute in full; 'p90 all' "
         "includes it; 'sim p50' is the simulator's TTFT p50 (all requests) for the same "
         "sends, against the real one")
    note(f"{'policy':<12} {'hit rate':>8} {'ttft p50 ms':>12} {'ttft p90 ms':>12} "
         f"{'p90 all ms':>11} {'audit err':>9} {'sim p50 ms':>11} {'real p50 ms':>12} "
         f"{'sim err':>8}")
    for p, rs in results.items():
        note(f"{p:<12} {rs.hit_rate:>8.1%} {rs.ttft_p50 * 1e3:>12.1f} "
             f"{rs.ttft_p90 * 1e3:>12.1f} {rs.ttft_p90_all * 1e3:>11.1f} {rs.audit_error:>9.1%} "
             f"{rs.sim_p50 * 1e3:>11.1f} {rs.ttft_p50_all * 1e3:>12.1f} {rs.sim_error:>8.1%}")
    kv, rr = results["kv"], results["round-robin"]
    ratio = rr.ttft_p90 / kv.ttft_p90
    if smoke:
        note(SMOKE_NOTE)
    note(f"ttft p90 ratio round-robin / kv: {ratio:.2f}")
    metrics: dict[str, Any] = {
        "hit_rate_kv": round(kv.hit_rate, 4), "hit_rate_round_robin": round(rr.hit_rate, 4),
        "hit_rate_random": round(results["random"].hit_rate, 4),
        "ttft_p90_ratio": round(ratio, 3),
        "ttft_p50_kv_ms": round(kv.ttft_p50 * 1e3, 3),
        "ttft_p50_round_robin_ms": round(rr.ttft_p50 * 1e3, 3),
        "ttft_p90_random_ms": round(results["random"].ttft_p90 * 1e3, 3),
        "ttft_p90_all_ratio": round(rr.ttft_p90_all / kv.ttft_p90_all, 3),
        "audit_error": round(kv.audit_error, 4),
        **metrics_extra,
        "runs_per_policy": w.repeats,
        **{f"sim_ttft_p50_error_{p.replace('-', '_')}": round(rs.sim_error, 4)
           for p, rs in results.items()},
    }
    claim = build_claim(
        statement=(f"With {w.workers} colocated workers, KV-aware routing gives {ratio:.2f}x lower "
                   f"p90 TTFT than round-robin on shared-prefix groups from the Mooncake "
                   f"conversation trace (hit rate {kv.hit_rate:.0%} vs {rr.hit_rate:.0%})"),
        metric="ttft_p90", value=round(kv.ttft_p90 * 1e3, 3), unit="ms",
        direction="lower-is-better",
        baseline_name="round-robin routing, same workers and workload",
        baseline_value=round(rr.ttft_p90 * 1e3, 3), metrics=metrics,
        model=model_ref(model_dir), hardware=hardware.summary(hw),
        workload=(f"Mooncake conversation trace: first {w.groups} conversations of >= {w.turns} "
                  f"turns, {w.min_prompt}-{w.max_prompt} tokens, turns repeating >= "
                  f"{w.extends:.0%} of the last's blocks, {w.tokens_per_hash} tokens/hash id; "
                  f"Poisson {rate:.2f} req/s ({w.load:.0%} of cold capacity), a turn after the "
                  f"last answer; p90 after turn 1; median of {w.repeats} run(s)"),
        precision="fp32", context=longest, concurrency=w.groups, seed=w.seed,
        duration_s=round(time.time() - started, 3), percentile="p90", raw_log="\n".join(log))
    if json_path is not None:
        write_claim(json_path, claim, "\n".join(log))
    return claim


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
