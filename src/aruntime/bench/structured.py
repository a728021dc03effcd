"""`aruntime bench structured`: decode throughput at batch 8 with a JSON-schema constraint against
the same requests unconstrained, in one run.

Eight chat-style prompts decode greedily on one engine, all added at once; each round runs them
unconstrained, then constrained (the rounds alternate, so load from elsewhere on the machine
hits both), after one warm-up round of each that does not count (the first compile of the schema
is there; it is cached after). The constraint is an array of at least 100 user records (a
nested object with enums, bounded strings and array, a pattern): it cannot complete within
max_tokens, so every request decodes exactly as many tokens as its unconstrained twin, and the
batch stays at 8 throughout; every step computes 8 real masks. Decode throughput counts the
tokens after each request's first, over the time from the last first token to the end; the
median round of each side counts. Each constrained output is checked to be a prefix its grammar
accepts, token for token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from aruntime.bench import hardware
from aruntime.bench.claim import ClaimSpec
from aruntime.bench.grammar import SCHEMA as RECORD
from aruntime.bench.report import Outcome, Report, add_json_argument, json_path, progress_notes
from aruntime.bench.stats import median_of

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine
    from aruntime.engine.sampling import SamplingParams

BATCH = 8
ACCEPTANCE = 0.9  # the bar: constrained >= 0.9 of unconstrained
SCHEMA = {"type": "array", "minItems": 100, "items": RECORD}
PROMPTS = [f"List the users of team {team} as JSON records: name, age, email, role, tags, "
           "address and whether they are active." for team in
           ("red", "blue", "green", "amber", "violet", "silver", "copper", "ivory")]


@dataclass(frozen=True, slots=True)
class Workload:
    max_tokens: int
    rounds: int

    def describe(self) -> str:
        return (f"batch {BATCH}, greedy, {self.max_tokens} output tokens each; constrained: "
                "JSON array of >= 100 nested user records (never completes, so lengths match); "
                f"{self.rounds} rounds alternating after a warm-up")


FULL, QUICK = Workload(max_tokens=128, rounds=5), Workload(max_tokens=48, rounds=2)


@dataclass(slots=True)
class Round:
    name: str  # "constrained" | "unconstrained"
    decode_s: float
    wall_s: float
    outputs: dict[str, list[int]] = field(default_factory=dict)

    @property
    def decode_tokens(self) -> int:
        return sum(len(t) - 1 for t in self.outputs.values())

    @property
    def tok_s(self) -> float:
        return self.decode_tokens / self.decode_s


def _params(w: Workload, constrained: bool) -> SamplingParams:
    from aruntime.engine.sampling import GuidedDecoding, SamplingParams

    guided = GuidedDecoding("json_schema", json.dumps(SCHEMA)) if constrained else None
    return SamplingParams(max_tokens=w.max_tokens, temperature=0.0, ignore_eos=True,
                          guided=guided)


def run_round(engine: LLMEngine, prompts: list[list[int]], w: Workload, constrained: bool,
              tag: str) -> Round:
    name = "constrained" if constrained else "unconstrained"
    outputs: dict[str, list[int]] = {f"{tag}-{i}": [] for i in range(len(prompts))}
    params = _params(w, constrained)
    t0 = time.perf_counter()
    for rid, prompt in zip(outputs, prompts, strict=True):
        engine.add_request(rid, prompt, params)
    first_all: float | None = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs[out.request_id].extend(out.new_token_ids)
        if first_all is None and all(outputs.values()):
            first_all = time.perf_counter()
    end = time.perf_counter()
    assert first_all is not None
    return Round(name, end - first_all, end - t0, outputs)


def _valid_prefixes(engine: LLMEngine, run: Round) -> int:
    spec = _params(QUICK, True).guided
    assert spec is not None
    ok = 0
    for tokens in run.outputs.values():
        fresh = engine.guided.matcher(spec).matcher
        ok += fresh.validate_tokens(tokens) == len(tokens)
    return ok


@dataclass(slots=True)
class Measured:
    model_dir: Path
    revision: str
    workload: Workload
    rounds: list[tuple[Round, Round]]  # (unconstrained, constrained), in the order run
    valid: int
    duration_s: float

    @property
    def model_name(self) -> str:
        from aruntime.engine.default_model import served_name

        return f"{served_name(self.model_dir)}@{self.revision}"


def measure(model_dir: Path, w: Workload, progress: TextIO | None) -> Measured:
    from aruntime.engine.config import EngineConfig
    from aruntime.engine.llm_engine import LLMEngine

    note = progress_notes(progress)
    started = time.perf_counter()
    engine = LLMEngine(EngineConfig(model=str(model_dir), max_num_seqs=BATCH))
    prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
    note("warm-up: one round of each")
    run_round(engine, prompts, w, False, "warm-u")
    run_round(engine, prompts, w, True, "warm-c")
    rounds = []
    for i in range(w.rounds):
        note(f"round {i + 1} of {w.rounds}")
        rounds.append((run_round(engine, prompts, w, False, f"u{i}"),
                       run_round(engine, prompts, w, True, f"c{i}")))
    valid = min(_valid_prefixes(engine, c) for _, c in rounds)
    return Measured(model_dir, str(engine.revision), w, rounds, valid,
                    time.perf_counter() - started)


def outcome(m: Measured, json_path: Path | None, out: TextIO | None, smoke: bool) -> Outcome:
    free = median_of([u for u, _ in m.rounds], lambda r: r.tok_s)
    guided = median_of([c for _, c in m.rounds], lambda r: r.tok_s)
    value, base = round(guided.tok_s, 2), round(free.tok_s, 2)
    ratio = value / base
    hw = hardware.describe("cpu")
    report = Report(out)
    report.lines([f"aruntime bench structured: {m.model_name}", f"hardware: {hardware.summary(hw)}",
                  f"workload: {m.workload.describe()}", "",
                  f"{'requests':<16}{'decode s':>10}{'wall s':>9}{'decode tokens':>15}"
                  f"{'decode tok/s':>14}"])
    for r in (free, guided):
        report.line(f"{r.name:<16}{r.decode_s:>10.2f}{r.wall_s:>9.2f}{r.decode_tokens:>15}"
                    f"{r.tok_s:>14.1f}")
    report.facts([
        ("decode tok/s per round", "unconstrained " + " / ".join(
            f"{u.tok_s:.1f}" for u, _ in m.rounds) + "; constrained " + " / ".join(
            f"{c.tok_s:.1f}" for _, c in m.rounds)),
        ("constrained outputs the grammar accepts", f"{m.valid}/{BATCH} (the fewest of a round)"),
        (f"acceptance (ratio >= {ACCEPTANCE})", "pass" if ratio >= ACCEPTANCE else "FAIL"),
        ("duration", f"{m.duration_s:.1f} s")], 42)
    for i, (u, c) in enumerate(m.rounds, 1):
        for r in (u, c):
            report.row(f"# round {i}, {r.name}: decode {r.decode_s:.4f} s, wall {r.wall_s:.4f} "
                       f"s, {r.decode_tokens} decode tokens, {r.tok_s:.2f} tok/s")
    report.reading("hardware", hw)
    metrics: dict[str, float | int | str] = {
        "baseline_tok_s": base, "decode_s": round(guided.decode_s, 4),
        "baseline_decode_s": round(free.decode_s, 4), "decode_tokens": guided.decode_tokens,
        "valid_outputs": m.valid, "batch": BATCH, "rounds": len(m.rounds),
        "tok_s_spread": round(statistics.pstdev(c.tok_s for _, c in m.rounds), 2)}
    report.reading("metrics", metrics)
    claim = ClaimSpec(
        statement=(f"Decoding under a JSON-schema constraint runs at {ratio:.2f}x the "
                   "unconstrained decode throughput at batch 8, same requests, same run"),
        metric="decode_throughput", value=value, unit="tok/s", direction="higher-is-better",
        baseline_name="unconstrained", baseline_value=base, metrics=metrics, model=m.model_name,
        hardware=hardware.summary(hw), workload=m.workload.describe(), precision="fp32",
        context=max(len(p) for p in PROMPTS) + m.workload.max_tokens, concurrency=BATCH,
        seed=0, duration_s=round(m.duration_s, 2), percentile="p50")
    return report.finish(f"decode throughput ratio constrained / unconstrained: {ratio:.2f}",
                         claim, json_path, smoke=smoke)


def run_bench(model_dir: Path, w: Workload, *, json_path: Path | None = None,
              out: TextIO | None = None, progress: TextIO | None = None,
              smoke: bool = False) -> Outcome:
    return outcome(measure(model_dir, w, progress), json_path, out, smoke)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.rounds} rounds of {QUICK.max_tokens} tokens instead of "
                             f"{FULL.rounds} of {FULL.max_tokens}; no claim written")
    add_json_argument(parser)
    from aruntime.engine.default_model import DEFAULT, MODEL_HELP

    parser.add_argument("--model", metavar="MODEL", default=DEFAULT, help=MODEL_HELP)


def run(args: argparse.Namespace) -> int:

    json_path(args)  # a directory is a usage error, before anything runs
    from aruntime.engine.default_model import checked_model

    run_bench(checked_model(args.model), QUICK if args.quick else FULL, json_path=args.json,
              smoke=args.quick)
    return 0
