"""`aruntime bench backends [--quick] [--json FILE]`: each backend that passes the gate, per
phase and bucket, as tokens/s of the dense work (on the default model and the demo model), then
the engine end to end with `--backends auto` (the table just measured) against eager only, on
the same greedy workload in alternating runs — ratio last (auto / eager, default model).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aruntime.bench.report import Outcome, Report, add_json_argument, json_path, progress_notes


@dataclass(frozen=True)
class Workload:
    buckets: dict[str, tuple[int, ...]]
    contexts: tuple[int, ...]  # each decode bucket's, measured at each
    repeats: int  # timings per bucket and backend (their median)
    prompts: int  # the end-to-end batch
    prompt_tokens: int
    new_tokens: int
    runs: int  # end-to-end runs of each mode, alternating

    def describe(self) -> str:
        b = "; ".join(f"{p} {','.join(map(str, r))}" for p, r in self.buckets.items())
        c = ",".join(map(str, self.contexts))
        return (f"buckets {b} (decode at contexts {c}), median of {self.repeats}; end to end "
                f"{self.prompts} prompts x "
                f"{self.prompt_tokens} tokens, {self.new_tokens} new (greedy), {self.runs} runs "
                "of each mode alternating")


FULL = Workload({"decode": (1, 8, 32), "prefill": (64, 256)}, (32, 256), 5, 8, 96, 24, 3)
QUICK = Workload({"decode": (1, 8), "prefill": (64,)}, (32,), 2, 4, 40, 6, 1)


def calibrated(path: Path, w: Workload, root: Path) -> Any:
    """The cost table of this model's backends, measured now as engine steps (and stored
    where `auto` reads it)."""
    from aruntime.engine.backends.calibrate import KV_BYTES, all_backends, calibrate
    from aruntime.engine.backends.table import table_path
    from aruntime.engine.config import EngineConfig
    from aruntime.engine.llm_engine import LLMEngine

    engine = LLMEngine(EngineConfig(model=str(path), max_num_seqs=max(w.buckets["decode"]),
                                    kv_cache_bytes=KV_BYTES))
    table = calibrate(engine, all_backends(), root, w.buckets, repeats=w.repeats,
                      contexts=w.contexts)
    table.save(table_path(root, engine.revision, "float32"))
    return table


def end_to_end(path: Path, w: Workload, root: Path) -> dict[str, list[float]]:
    """Generated tokens/s of the engine, eager and auto, alternating; their outputs must match."""
    import random

    from aruntime.engine.config import EngineConfig
    from aruntime.engine.llm_engine import LLMEngine
    from aruntime.engine.sampling import SamplingParams

    engines = {mode: LLMEngine(EngineConfig(model=str(path), backends=mode,
                                            backends_dir=str(root), max_num_seqs=w.prompts))
               for mode in ("eager", "auto")}
    vocab = engines["eager"].model_config.vocab_size
    params = SamplingParams(max_tokens=w.new_tokens, temperature=0.0, ignore_eos=True)
    rates: dict[str, list[float]] = {"eager": [], "auto": []}
    for run in range(w.runs + 1):  # the first of each is a warm-up
        rng = random.Random(run)
        prompts = [[rng.randrange(vocab) for _ in range(w.prompt_tokens)]
                   for _ in range(w.prompts)]
        outs = {}
        for mode, engine in engines.items():
            started = time.perf_counter()
            outs[mode] = [o.new_token_ids for o in engine.generate(prompts, params)]
            if run:
                rates[mode].append(w.prompts * w.new_tokens / (time.perf_counter() - started))
        if outs["auto"] != outs["eager"]:
            raise RuntimeError("auto's greedy outputs differ from eager's: the gate let a "
                               "backend through that it should not have")
    return rates


def _per_phase(report: Report, label: str, table: Any) -> dict[str, float]:
    """Tokens/s lines per backend and bucket; the best gain over eager per phase."""
    gains: dict[str, float] = {}
    for key, costs in sorted(table.seconds.items()):
        phase, rows = key.split("/")[:2]
        shown = ", ".join(f"{b} {int(rows) / s:,.0f}" for b, s in sorted(costs.items()))
        report.line(f"  {label} {key:<12} tokens/s: {shown}")
        best = min(costs.values())
        gains[phase] = max(gains.get(phase, 0.0), costs["eager"] / best)
    return gains


def _calibrated_lines(report: Report, label: str, table: Any,
                      figures: dict[str, float | int | str]) -> list[str]:
    """What passed the gate, and the tokens/s per backend and bucket; the backends beyond
    eager that passed."""
    passing = sorted(set(table.versions) - {"eager"})
    report.line(f"{label}: passed the gate: {', '.join(passing) or 'none'}"
                + "".join(f"; refused {b}: {why[:80]}" for b, why in table.refused.items()))
    for phase, gain in _per_phase(report, label, table).items():
        figures[f"{label}_{phase}_best_gain"] = round(gain, 3)
    return passing


def run_bench(w: Workload, *, json_file: Path | None = None, out: TextIO | None = None,
              smoke: bool = False, models: tuple[tuple[str, str | Path], ...] | None = None,
              ) -> Outcome:
    """`models`: (label, model) pairs, the first also run end to end (default: the default
    model, then the demo model)."""
    from aruntime.bench import hardware
    from aruntime.bench.claim import ClaimSpec
    from aruntime.engine.backends.registry import BACKENDS
    from aruntime.engine.default_model import DEFAULT, DEMO, checked_model
    from aruntime.engine.loader import load_checkpoint

    note = progress_notes()
    started = time.perf_counter()
    report = Report(out)
    hw = hardware.describe("cpu")
    report.lines(["aruntime bench backends: the dense parts per backend, then the engine "
                  "with auto against eager", f"hardware: {hardware.summary(hw)}",
                  f"workload: {w.describe()}", ""])
    figures: dict[str, float | int | str] = {}
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="aruntime-bench-backends-") as tmp:
        for n, (label, name) in enumerate(models or (("default", DEFAULT), ("demo", DEMO))):
            path = checked_model(name)
            note(f"{label}: calibrating every backend")
            passing = _calibrated_lines(report, label, calibrated(path, w, Path(tmp) / label),
                                        figures)
            if n == 0:  # the backends themselves; their graph and delegate variants apart
                plain = [b for b in passing if b in BACKENDS]
                figures["backends_passing_gate"] = len(plain)
                figures["variants_passing_gate"] = len(passing) - len(plain)
                revision = f"{label}@{load_checkpoint(path).revision}"
                note(f"{label}: the engine end to end, eager and auto")
                rates = end_to_end(path, w, Path(tmp) / label)
                for mode, values in rates.items():
                    report.reading(f"{mode}_tokens_per_s", [round(v, 2) for v in values])
    eager, auto = (statistics.median(rates[m]) for m in ("eager", "auto"))
    ratio = auto / eager
    figures.update({"eager_tokens_per_s": round(eager, 2), "auto_tokens_per_s": round(auto, 2),
                    "ratio": round(ratio, 3)})
    report.facts([("engine, eager only", f"{eager:.1f} tokens/s"),
                  ("engine, auto", f"{auto:.1f} tokens/s")], 22)
    report.reading("metrics", figures)
    claim = ClaimSpec(
        statement=(f"On the default model the engine with --backends auto (each step on the "
                   f"backend calibrated cheapest for its phase and bucket) generates "
                   f"{auto:.1f} tokens/s against {eager:.1f} eager only ({ratio:.2f}x); "
                   f"{figures['backends_passing_gate']} backends beyond eager pass the gate, "
                   f"and {figures['variants_passing_gate']} of their whole-step graph and "
                   "delegate variants"),
        metric="engine_tokens_per_s_auto", value=round(auto, 2), unit="tokens/s",
        direction="higher-is-better", baseline_name="the same engine, eager only",
        baseline_value=round(eager, 2), metrics=figures, model=revision,
        hardware=hardware.summary(hw), workload=w.describe(), precision="fp32",
        context=w.prompt_tokens + w.new_tokens, concurrency=w.prompts, seed=0,
        duration_s=round(time.perf_counter() - started, 2), percentile="p50")
    return report.finish(f"engine tokens/s, auto / eager: {ratio:.3f}", claim, json_file,
                         smoke=smoke)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer buckets and runs")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    run_bench(QUICK if args.quick else FULL, json_file=json_path(args), smoke=args.quick)
    return 0
