"""`aruntime bench policy`: what a policy decision costs, in one run — per decision p50/p99 on a
pre-parsed 60-rule Cedar policy, cached and uncached, against the baseline of re-parsing the
policy text on every call, and the decisions' share of a short request's TTFT.

The policy and the requests are bench/policy_workload.py's (principals of four tenants with one
to three roles, every action on a resource of its type, contexts with the facts the decision
points pass). Uncached is a decision-cache miss through `CedarAuthorizer.decide`, the whole path
a decision point takes (its key, the pre-parsed entities, the slice of the policy its action and
resource can match); cached is a hit on the same path; the baseline builds the same request and
calls `cedarpy.is_authorized(request, POLICY_TEXT, entities)`, whose answer each uncached one is
checked against. The TTFT is of short chat-like prompts (prefix caching off, so each is a full
prefill) on the demo model with an in-process engine, as `bench engine` measures it; a request
takes three decisions (invoke_model, the shared-prefix check, the output hook), so the share is
3 x the uncached p50 over the TTFT p50. Each round measures every part of a decision in turn,
so load from elsewhere on the machine hits them all; the TTFT probes come after the rounds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import cedarpy

from aruntime.bench import policy_workload as workload
from aruntime.bench.report import Outcome, add_json_argument, json_path, progress_notes
from aruntime.policy.cedar_authorizer import (
    CedarAuthorizer,
    CedarPolicy,
    context_of,
    request_of,
)
from aruntime.policy.decision import Decision

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine

DECISIONS_PER_REQUEST = 3  # invoke_model, publish_shared_prefix, check_output
PROMPTS = ("Summarise the refund policy for order {i} in one sentence.",
           "Which of my runs from yesterday are still waiting for approval? ({i})",
           "Draft a short reply to ticket {i} saying the fix ships on Monday.")


@dataclass(frozen=True, slots=True)
class Workload:
    rounds: int
    uncached: int  # decisions a round, each a miss
    cached: int  # decisions a round, each a hit
    reparse: int  # baseline calls a round
    ttft: int  # TTFT probes, after the rounds
    pool: int = 500  # distinct requests the cached decisions repeat

    def describe(self) -> str:
        return (f"{workload.RULES}-rule Cedar policy, seeded requests over 4 tenants; per round "
                f"{self.uncached} uncached, {self.cached} cached (pool {self.pool}), "
                f"{self.reparse} re-parse calls; {self.rounds} rounds; then {self.ttft} TTFT "
                "probes (demo model)")


FULL = Workload(rounds=10, uncached=500, cached=2000, reparse=40, ttft=20)
QUICK = Workload(rounds=2, uncached=100, cached=300, reparse=10, ttft=4, pool=100)


@dataclass(slots=True)
class Samples:
    """Seconds per call, by part, in the order measured."""

    uncached: list[float] = field(default_factory=list)
    cached: list[float] = field(default_factory=list)
    reparse: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    agree: int = 0  # uncached answers equal to the baseline's, over the baseline's requests
    hits: int = 0  # cached decisions that were hits (all of them, or the figure is wrong)
    allowed: int = 0  # uncached decisions that allowed


@dataclass(slots=True)
class Measured:
    model_dir: Path
    revision: str
    workload: Workload
    samples: Samples
    prompt_tokens: int
    duration_s: float


def _timed(a: CedarAuthorizer, reqs: list[workload.PolicyRequest],
           into: list[float]) -> list[Decision]:
    """Each request decided through `a`, its time appended to `into`."""
    out = []
    for r in reqs:
        t0 = time.perf_counter()
        d = a.decide(r.principal, r.action, r.resource, r.context)
        into.append(time.perf_counter() - t0)
        out.append(d)
    return out


def _uncached(a: CedarAuthorizer, reqs: list[workload.PolicyRequest], s: Samples) -> None:
    s.allowed += sum(d.allowed for d in _timed(a, reqs, s.uncached))


def _cached(a: CedarAuthorizer, reqs: list[workload.PolicyRequest], s: Samples) -> None:
    s.hits += sum(d.cached for d in _timed(a, reqs, s.cached))


def _reparse(text: str, ours: CedarAuthorizer, reqs: list[workload.PolicyRequest],
             s: Samples) -> None:
    """The baseline, each answer checked against ours (untimed)."""
    for r in reqs:
        t0 = time.perf_counter()
        request, entities = request_of(r.principal, r.action, r.resource,
                                       context_of(r.principal, r.context))
        allowed = cedarpy.is_authorized(request, text, entities).allowed
        s.reparse.append(time.perf_counter() - t0)
        s.agree += allowed == ours.decide(r.principal, r.action, r.resource, r.context).allowed


def _ttft(engine: LLMEngine, prompts: list[list[int]], tag: str, s: Samples) -> None:
    from aruntime.bench.engine_systems import first_token_s

    for i, prompt in enumerate(prompts):
        s.ttft.append(first_token_s(engine, f"{tag}-{i}", prompt)[0])


def _engine(model_dir: Path) -> LLMEngine:
    from aruntime.engine.config import EngineConfig
    from aruntime.engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(model=str(model_dir), kv_cache_bytes=16 * 1024 * 1024,
                                  max_num_seqs=8, enable_prefix_caching=False))


def measure(model_dir: Path, w: Workload, progress: TextIO | None) -> Measured:
    """The decision rounds, then the TTFT probes (the engine loads after the decisions, as it
    lives in its own process under serve: its heap is not the decisions' to walk)."""
    note = progress_notes(progress)
    started = time.perf_counter()
    text = workload.policy_text()
    policy = CedarPolicy.parse(text, source="bench")  # pre-parsed once, as serve does
    misses = CedarAuthorizer(policy, cache_size=0)  # every decision a miss
    hits = CedarAuthorizer(policy)
    stream = workload.requests(w.rounds * w.uncached, seed=1)
    pool = workload.requests(w.pool, seed=2)
    baseline = workload.requests(w.rounds * w.reparse, seed=3)
    note("warm-up: the policy's slices, the decision cache's pool")
    _uncached(misses, workload.requests(300, seed=4), Samples())
    _cached(hits, pool, Samples())
    s, rng = Samples(), random.Random(0)
    for i in range(w.rounds):
        note(f"decisions, round {i + 1} of {w.rounds}")
        _uncached(misses, stream[i * w.uncached:(i + 1) * w.uncached], s)
        _cached(hits, rng.choices(pool, k=w.cached), s)
        _reparse(text, misses, baseline[i * w.reparse:(i + 1) * w.reparse], s)
    note(f"TTFT: {w.ttft} short prompts on the demo model, after 2 not counted")
    engine = _engine(model_dir)
    prompts = [engine.tokenizer.encode(PROMPTS[i % len(PROMPTS)].format(i=1000 + i))
               for i in range(2 + w.ttft)]
    _ttft(engine, prompts[:2], "warm", Samples())
    _ttft(engine, prompts[2:], "ttft", s)
    return Measured(model_dir, str(engine.revision), w, s, max(map(len, prompts)),
                    time.perf_counter() - started)


def run_bench(model_dir: Path, w: Workload, *, json_path: Path | None = None,
              out: TextIO | None = None, progress: TextIO | None = None) -> Outcome:
    from aruntime.bench.policy_figures import outcome

    return outcome(measure(model_dir, w, progress), json_path, out)


def us(values: list[float], q: str) -> float:
    from aruntime.bench.stats import p99

    return round((statistics.median(values) if q == "p50" else p99(values)) * 1e6, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.rounds} rounds instead of {FULL.rounds}, fewer decisions "
                             "each: the same measurement, less precise")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    from aruntime.engine.default_model import DEMO, checked_model

    json_path(args)  # a directory is a usage error, before anything runs
    run_bench(checked_model(DEMO), QUICK if args.quick else FULL, json_path=args.json)
    return 0
