"""`aruntime bench parallel [--quick] [--json FILE] [--model M] [--tensor-parallel N]
[--pipeline-parallel M]`: the engine on one rank, sharded over N ranks, and split into M
pipeline stages (processes joined by gloo, each with its share of the machine's threads), on the
same greedy batch in the same run: each step's time split into compute and communication (rank
0's time inside the collectives and the stage-to-stage sends and receives — for a pipeline,
waiting on the later stages counts as communication), the bytes rank 0 put into them per token
processed and per token generated, the steps' own broadcast bytes, tokens/s and the scaling
efficiency (speed-up over the ranks). Ratio last: tokens/s with N tensor-parallel ranks over
one. The greedy tokens of every configuration are checked equal before any figure counts.
The pipeline runs twice: each step whole (its stages one after another) and cut into
micro-batches (as many as stages), which let the stages overlap; their ratio is the overlap's
gain. It runs the default model (SmolLM2-135M: its 3 KV heads split 2 and 1 over two ranks)."""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aruntime.bench.report import Outcome, Report, add_json_argument, json_path, progress_notes
from aruntime.errors import UsageError


@dataclass(frozen=True)
class Workload:
    model: str
    tensor_parallel: int
    pipeline_parallel: int
    prompts: int
    prompt_tokens: int
    new_tokens: int
    repeats: int

    def describe(self) -> str:
        return (f"{self.prompts} greedy prompts of {self.prompt_tokens} tokens, "
                f"{self.new_tokens} new tokens each, on 1 rank, on {self.tensor_parallel} "
                f"tensor-parallel ranks and on {self.pipeline_parallel} pipeline stages "
                f"without and with {self.pipeline_parallel} micro-batches (gloo on "
                f"loopback); the median of {self.repeats} runs each")

    def configs(self) -> list[Layout]:
        pp = self.pipeline_parallel
        return [(1, 1, 1), (self.tensor_parallel, 1, 1), (1, pp, 1), (1, pp, pp)]


Layout = tuple[int, int, int]  # tensor-parallel ranks, pipeline stages, micro-batches
FULL = Workload("default", 2, 2, 8, 64, 32, 3)
QUICK = Workload("default", 2, 2, 4, 32, 8, 1)


@dataclass
class Run:
    tokens: list[list[int]]
    seconds: float
    steps_ms: list[float]
    comm_ms: list[float]
    comm_bytes: int
    step_bytes: int
    processed: int  # prompt and generated tokens through the model
    generated: int


def _run(engine: Any, w: Workload) -> Run:
    from aruntime.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=w.new_tokens, temperature=0.0, ignore_eos=True)
    c = engine.group.collectives if engine.group is not None else None
    bytes0, steps0 = (c.comm_bytes, c.step_bytes) if c else (0, 0)
    for i in range(w.prompts):
        engine.add_request(f"p{i}-{time.monotonic_ns()}",
                           [(11 * i + j) % 1000 + 20 for j in range(w.prompt_tokens)], params)
    out: dict[str, list[int]] = {}
    steps, comm = [], []
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        ns0, t0 = (c.comm_ns if c else 0), time.perf_counter_ns()
        for delta in engine.step():
            out.setdefault(delta.request_id, []).extend(delta.new_token_ids)
        steps.append((time.perf_counter_ns() - t0) / 1e6)
        comm.append(((c.comm_ns if c else 0) - ns0) / 1e6)
    seconds = time.perf_counter() - started
    generated = sum(len(t) for t in out.values())
    return Run([out[k] for k in sorted(out)], seconds, steps, comm,
               (c.comm_bytes - bytes0) if c else 0, (c.step_bytes - steps0) if c else 0,
               # each sequence's last token is sampled, never run through the model
               w.prompts * (w.prompt_tokens - 1) + generated, generated)


def _measure(model: Path, w: Workload, layout: Layout) -> list[Run]:
    from aruntime.engine.config import EngineConfig
    from aruntime.engine.llm_engine import LLMEngine

    tp, pp, mb = layout
    engine = LLMEngine(EngineConfig(model=str(model), tensor_parallel=tp, pipeline_parallel=pp,
                                    micro_batches=mb, enable_prefix_caching=False))
    try:
        _run(engine, Workload(w.model, tp, pp, 2, 8, 2, 1))  # warm: first calls, thread pools
        return [_run(engine, w) for _ in range(w.repeats)]
    finally:
        engine.close()


def _summary(runs: list[Run]) -> dict[str, float]:
    med = statistics.median
    return {"tokens_per_s": med(r.generated / r.seconds for r in runs),
            "step_ms": med(med(r.steps_ms) for r in runs),
            "comm_ms": med(med(r.comm_ms) for r in runs),
            "comm_bytes_per_token": med(r.comm_bytes / r.processed for r in runs),
            "comm_bytes_per_generated_token": med(r.comm_bytes / r.generated for r in runs),
            "step_bytes_per_step": med(r.step_bytes / len(r.steps_ms) for r in runs)}


def _report(report: Report, label: str, s: dict[str, float]) -> None:
    report.line(f"  {label:<10} {s['tokens_per_s']:8.1f} tokens/s; a step {s['step_ms']:.2f} ms "
                f"(compute {s['step_ms'] - s['comm_ms']:.2f} ms, communication "
                f"{s['comm_ms']:.2f} ms); {s['comm_bytes_per_token']:.0f} bytes per token "
                f"processed, {s['comm_bytes_per_generated_token']:.0f} per generated token; "
                f"{s['step_bytes_per_step']:.0f} bytes of step inputs broadcast a step")
    report.reading(label.replace(" ", "_"), s)


def _figures(w: Workload, summary: dict[Layout, dict[str, float]],
             ) -> dict[str, float | int | str]:
    pp = w.pipeline_parallel
    s1, sn = summary[1, 1, 1], summary[w.tensor_parallel, 1, 1]
    sp, whole = summary[1, pp, pp], summary[1, pp, 1]
    ratio = sn["tokens_per_s"] / s1["tokens_per_s"]
    return {"tokens_per_s_tp1": round(s1["tokens_per_s"], 2),
            "tokens_per_s_tpn": round(sn["tokens_per_s"], 2),
            "tokens_per_s_ppm": round(sp["tokens_per_s"], 2),
            "tokens_per_s_ppm_whole_steps": round(whole["tokens_per_s"], 2),
            "micro_batch_gain": round(sp["tokens_per_s"] / whole["tokens_per_s"], 3),
            "tensor_parallel": w.tensor_parallel, "pipeline_parallel": w.pipeline_parallel,
            "step_ms_tp1": round(s1["step_ms"], 3),
            "step_ms_tpn": round(sn["step_ms"], 3), "comm_ms_tpn": round(sn["comm_ms"], 3),
            "compute_ms_tpn": round(sn["step_ms"] - sn["comm_ms"], 3),
            "step_ms_ppm": round(sp["step_ms"], 3), "comm_ms_ppm": round(sp["comm_ms"], 3),
            "compute_ms_ppm": round(sp["step_ms"] - sp["comm_ms"], 3),
            "comm_bytes_per_token": round(sn["comm_bytes_per_token"], 1),
            "comm_bytes_per_generated_token": round(sn["comm_bytes_per_generated_token"], 1),
            "pp_comm_bytes_per_token": round(sp["comm_bytes_per_token"], 1),
            "scaling_efficiency": round(ratio / w.tensor_parallel, 3),
            "pp_scaling_efficiency": round(sp["tokens_per_s"] / s1["tokens_per_s"]
                                           / w.pipeline_parallel, 3),
            "ratio": round(ratio, 3)}


def run_bench(w: Workload, *, json_file: Path | None = None, out: TextIO | None = None,
              smoke: bool = False) -> Outcome:
    from aruntime.bench import hardware
    from aruntime.bench.claim import ClaimSpec
    from aruntime.engine.default_model import checked_model
    from aruntime.engine.loader import load_checkpoint

    path = checked_model(w.model)
    model = f"{path.name}@{load_checkpoint(path).revision}"
    note, started, report = progress_notes(), time.perf_counter(), Report(out)
    hw = hardware.describe("cpu")
    report.lines(["aruntime bench parallel: the engine on 1 rank, tensor-parallel and "
                  "pipeline-parallel", f"hardware: {hardware.summary(hw)}",
                  f"workload: {w.describe()}", ""])
    runs = {}
    for layout in w.configs():
        note("TP={} PP={} micro-batches={}".format(*layout))
        runs[layout] = _measure(path, w, layout)
    base = runs[1, 1, 1]
    if any(a.tokens != b.tokens for rs in runs.values() for a, b in zip(base, rs, strict=True)):
        raise RuntimeError("a parallel engine's greedy tokens differ from one rank's")
    summary = {k: _summary(v) for k, v in runs.items()}
    for (tp, pp, mb), sm in summary.items():
        _report(report, f"TP={tp} PP={pp}" + (f" in {mb} micro-batches" if mb > 1 else ""), sm)
    s1, sn = summary[1, 1, 1], summary[w.tensor_parallel, 1, 1]
    figures = _figures(w, summary)
    ratio, efficiency = float(figures["ratio"]), float(figures["scaling_efficiency"])
    report.line(f"  greedy tokens equal in every configuration; scaling efficiency: tensor "
                f"parallel {efficiency:.0%}, pipeline {float(figures['pp_scaling_efficiency']):.0%}"
                f"; micro-batches make the pipeline {float(figures['micro_batch_gain']):.2f}x "
                f"as fast as whole steps")
    report.reading("metrics", figures)
    claim = ClaimSpec(
        statement=(f"Sharded over {w.tensor_parallel} tensor-parallel ranks on this machine, "
                   f"the engine makes {sn['tokens_per_s']:.1f} greedy tokens/s against "
                   f"{s1['tokens_per_s']:.1f} on one ({ratio:.2f}x, {efficiency:.0%} "
                   f"efficiency); communication is {sn['comm_ms']:.2f} of each "
                   f"{sn['step_ms']:.2f} ms step"),
        metric="tensor_parallel_tokens_per_s", value=round(sn["tokens_per_s"], 2),
        unit="tokens/s", direction="higher-is-better", baseline_name="the engine on one rank",
        baseline_value=round(s1["tokens_per_s"], 2), metrics=figures, model=model,
        hardware=hardware.summary(hw), workload=w.describe(), precision="fp32",
        context=w.prompt_tokens + w.new_tokens, concurrency=w.prompts, seed=0,
        duration_s=round(time.perf_counter() - started, 2), percentile="p50")
    return report.finish(f"tokens/s on {w.tensor_parallel} ranks / on 1: {ratio:.2f}", claim,
                         json_file, smoke=smoke)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a few short prompts, one run")
    parser.add_argument("--model", default=None, help="default (the default), demo, or a path")
    parser.add_argument("--tensor-parallel", type=int, default=2, metavar="N")
    parser.add_argument("--pipeline-parallel", type=int, default=2, metavar="M")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    base = QUICK if args.quick else FULL
    w = Workload(args.model or base.model, args.tensor_parallel, args.pipeline_parallel,
                 base.prompts, base.prompt_tokens, base.new_tokens, base.repeats)
    try:
        run_bench(w, json_file=json_path(args), smoke=args.quick)
    except ValueError as exc:  # a model the ranks cannot share: one line
        raise UsageError(str(exc)) from None
    return 0
