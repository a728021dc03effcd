"""`aruntime backends calibrate`: time every backend that passes the gate on this machine, per
phase and bucket, as the engine's own steps — a decode step of `rows` sequences, a prefill
step of one `rows`-token chunk, attention and sampling included, so what one runtime's threads
cost the next step's shows — median of repeats; and store the table `auto` reads."""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from aruntime.engine.backends.base import Compiled
from aruntime.engine.backends.parts import compile_parts, eager_parts, probing
from aruntime.engine.backends.registry import EAGER, backend, names
from aruntime.engine.backends.table import CostTable
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.keys import CacheScope

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)
DECODE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PREFILL_BUCKETS = (16, 64, 256, 1024)
SCOPE = CacheScope(b"calibration", device_only=True)  # nothing of it outlives the run
DECODE_PROMPT = 8  # a decode bucket's context when the table measures none
DECODE_CONTEXTS = (32, 256)  # the contexts a decode bucket is measured at
KV_BYTES = 1 << 30  # the calibrating engine's KV pool: 64 rows of 256 tokens fit, unpreempted


def _steps(engine: LLMEngine) -> list[float]:
    """Run the engine dry, timing each step."""
    times = []
    while engine.has_unfinished_requests():
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
    return times


def _decode_steps(engine: LLMEngine, rows: int) -> list[float]:
    """Run the engine dry, timing the steps after every row has its first token (however many
    steps the prefill took): decode steps of all `rows`."""
    times, started_all, seen = [], False, set()
    while engine.has_unfinished_requests():
        started = time.perf_counter()
        outputs = engine.step()
        if started_all:
            times.append(time.perf_counter() - started)
        seen |= {o.request_id for o in outputs if o.new_token_ids}
        started_all = started_all or len(seen) == rows
    return times


def step_seconds(engine: LLMEngine, phase: str, rows: int, repeats: int, seed: int,
                 context: int = DECODE_PROMPT) -> float:
    rng = random.Random(seed)
    vocab = engine.model_config.vocab_size
    if phase == "decode":  # `rows` sequences of `context` tokens, prefilled, then decoding
        params = SamplingParams(max_tokens=repeats + 3, temperature=0.0, ignore_eos=True)
        for i in range(rows):
            engine.add_request(f"cal-{seed}-{i}", [rng.randrange(vocab)
                                                   for _ in range(context)], params,
                               scope=SCOPE)
        return statistics.median(_decode_steps(engine, rows)[1:])  # past one warm step
    one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    times = []
    for r in range(repeats + 1):  # each prompt a single prefill step; the first warms up
        engine.add_request(f"cal-{seed}-{r}", [rng.randrange(vocab) for _ in range(rows)], one,
                           scope=SCOPE)
        times += _steps(engine)[:1] if r else []
    return statistics.median(times)


def calibrate(engine: LLMEngine, names: Iterable[str], backends_dir: Path,
              buckets: dict[str, tuple[int, ...]], repeats: int = 5,
              contexts: tuple[int, ...] = ()) -> CostTable:
    """The table over `buckets` (phase -> rows), each decode bucket at each of `contexts`
    (none: at a short prompt's)."""
    from aruntime.bench.hardware import describe, summary

    model = engine.runner.model
    table = CostTable(engine.revision, engine.config.dtype, summary(describe("cpu")), {})
    usable: dict[str, dict[str, Compiled]] = {EAGER: eager_parts(model)}
    for name in names:
        if name == EAGER:
            continue
        try:
            usable[name] = compile_parts(model, name, backends_dir / "cache", engine.revision)
        except Exception as exc:  # refused or missing: recorded, and the others go on
            table.refused[name] = str(exc)
            logger.warning("backend %s: %s", name, exc)
    table.versions = {name: backend(name).version() for name in usable}
    cells = [(phase, rows, context) for phase, rows_set in buckets.items() for rows in rows_set
             for context in (contexts if phase == "decode" and contexts else (None,))]
    with probing(engine) as force:
        for phase, rows, context in cells:
            costs = {}
            for n, name in enumerate(usable):
                force(usable, name)
                costs[name] = step_seconds(engine, phase, rows, repeats, seed=rows * 31 + n,
                                           context=context or DECODE_PROMPT)
            key = f"{phase}/{rows}" + (f"/{context}" if context else "")
            table.seconds[key] = costs
    return table


def all_backends() -> list[str]:
    return names()
