"""The gate's second half, on the whole model: probe prompts decoded greedily by the engine
itself with each compiled backend forced, against eager — tokens identical, or the backend is
refused. Prefix caching is off and the prompts are device-only while it runs, so every token
is computed by the backend under test and nothing of it outlives the check."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aruntime.engine.backends.gate import GateRefused
from aruntime.engine.backends.parts import PartDispatch, probing
from aruntime.engine.backends.registry import EAGER
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.keys import CacheScope

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine

PROBE_LENGTHS = (5, 23, 40)  # a short prompt, one over a block, one over two
NEW_TOKENS = 8


def _greedy(engine: LLMEngine, prompts: list[list[int]], tag: str) -> list[list[int]]:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    scope = CacheScope(b"backend-gate", device_only=True)
    ids = [f"gate-{tag}-{i}" for i in range(len(prompts))]
    got: dict[str, list[int]] = {rid: [] for rid in ids}
    for rid, prompt in zip(ids, prompts, strict=True):
        engine.add_request(rid, prompt, params, scope=scope)
    while engine.has_unfinished_requests():
        for out in engine.step():
            got[out.request_id] += out.new_token_ids
    return [got[rid] for rid in ids]


def greedy_gate(engine: LLMEngine, dispatch: PartDispatch) -> None:
    vocab = engine.model_config.vocab_size
    prompts = [[(31 * i + 7 * j + 11) % vocab for j in range(n)]
               for i, n in enumerate(PROBE_LENGTHS)]
    with probing(engine) as force:
        force(dispatch.compiled, EAGER)
        want = _greedy(engine, prompts, EAGER)
        for name in dispatch.compiled:
            if name == EAGER:
                continue
            force(dispatch.compiled, name)
            got = _greedy(engine, prompts, name)
            for i, (w, g) in enumerate(zip(want, got, strict=True)):
                if w != g:
                    at = next(j for j, (a, b) in enumerate(zip(w, g, strict=True)) if a != b)
                    raise GateRefused(f"{name}: greedy tokens differ from eager's on probe "
                                      f"prompt {i} ({len(prompts[i])} tokens) at new token {at}")
    engine.runner.dispatch = dispatch
