"""Constrained decoding in the engine, on the tiny demo checkpoint (random weights: the schemas
are bounded so outputs finish within max_tokens)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from aruntime.engine.config import EngineConfig
from aruntime.engine.guided import GuidedDecoder
from aruntime.engine.guided_grammar import GuidedDecodingError, check_guided
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import GuidedDecoding, SamplingParams

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "name": {"type": "string", "maxLength": 6},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "kind": {"const": "demo"},
    },
    "required": ["color", "n", "ok", "name", "tags", "kind"],
    "additionalProperties": False,
}
GUIDED = GuidedDecoding("json_schema", json.dumps(SCHEMA))
CALL: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"const": "get_weather"}, "arguments": {
        "type": "object", "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}},
        "required": ["city"], "additionalProperties": False}},
    "required": ["name", "arguments"], "additionalProperties": False,
}


@pytest.fixture(scope="module")
def eng(tiny_model_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cpu", block_size=4,
                                  kv_cache_bytes=4 * 1024 * 1024))


def _prompt(eng: LLMEngine, text: str = "Reply in JSON please") -> list[int]:
    return eng.tokenizer.encode(text)


def _guided(spec: GuidedDecoding, seed: int, max_tokens: int = 120,
            temperature: float = 1.0) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, guided=spec)


def test_json_schema_outputs_validate_across_seeds(eng: LLMEngine) -> None:
    outs = eng.generate([_prompt(eng)] * 16, [_guided(GUIDED, s, temperature=1.0 + (s % 2))
                                              for s in range(16)])
    for out in outs:
        assert out.finish_reason == "stop", out.new_text
        jsonschema.validate(json.loads(out.new_text), SCHEMA)
        assert out.new_text.startswith('{"color": ')  # json.dumps's layout, keys in order


def test_json_object_stays_json(eng: LLMEngine) -> None:
    spec = GuidedDecoding("json_object")
    outs = eng.generate([_prompt(eng)] * 6, [_guided(spec, s, max_tokens=24) for s in range(6)])
    for out in outs:
        assert out.new_text.startswith("{")
        if out.finish_reason == "stop":
            assert isinstance(json.loads(out.new_text), dict)
        else:  # cut at max_tokens: still a prefix the grammar accepts, token for token
            fresh = eng.guided.matcher(spec).matcher
            assert fresh.validate_tokens(out.new_token_ids) == len(out.new_token_ids)


def _calls(text: str, begin: str, end: str) -> list[Any]:
    body = re.escape(begin) + r"(.*?)" + re.escape(end)
    assert re.fullmatch(rf"(?:{body}\n?)+", text, re.S), text
    return [json.loads(m) for m in re.findall(body, text, re.S)]


def test_tool_calls_once_and_repeated(eng: LLMEngine) -> None:
    begin, end = "<tool_call>\n", "\n</tool_call>"
    once = GuidedDecoding("tool_calls", json.dumps(CALL), begin=begin, end=end)
    many = GuidedDecoding("tool_calls", json.dumps(CALL), begin=begin, end=end, repeat=True)
    outs = eng.generate([_prompt(eng)] * 8,
                        [_guided(once if s < 4 else many, s, 160) for s in range(8)])
    for s, out in enumerate(outs):
        assert out.finish_reason == "stop", out.new_text
        calls = _calls(out.new_text, begin, end)
        assert len(calls) == 1 or s >= 4
        for call in calls:
            jsonschema.validate(call, CALL)


def test_a_special_token_in_begin_is_that_token(eng: LLMEngine) -> None:
    begin = "<|im_start|>call\n"  # a special token of the demo tokenizer, then text
    spec = GuidedDecoding("tool_calls", json.dumps(CALL), begin=begin, end="\n")
    (out,) = eng.generate([_prompt(eng)], [_guided(spec, 3)])
    special = eng.tokenizer.backend.token_to_id("<|im_start|>")
    assert out.new_token_ids[0] == special and out.finish_reason == "stop"
    assert out.new_text.startswith("call\n")  # special tokens are not shown as text
    jsonschema.validate(json.loads(out.new_text.removeprefix("call\n")), CALL)


def test_a_mixed_batch_constrains_only_its_guided_rows(eng: LLMEngine) -> None:
    free = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    (alone,) = eng.generate([_prompt(eng, "plain text")], free)
    prompts = [_prompt(eng), _prompt(eng, "plain text"), _prompt(eng)]
    outs = eng.generate(prompts, [_guided(GUIDED, 1), free, _guided(GUIDED, 2)])
    assert outs[1].new_token_ids == alone.new_token_ids  # greedy, untouched by the masks
    for out in (outs[0], outs[2]):
        jsonschema.validate(json.loads(out.new_text), SCHEMA)


def test_prefix_cached_repeat_is_still_constrained(eng: LLMEngine) -> None:
    prompt = _prompt(eng, "a longer prompt that fills several blocks of the cache " * 2)
    first, second = (eng.generate([prompt], _guided(GUIDED, 7))[0] for _ in range(2))
    assert second.num_cached_tokens > 0
    assert first.new_text == second.new_text  # same seed: the same constrained answer
    jsonschema.validate(json.loads(second.new_text), SCHEMA)


def test_preempted_sequences_keep_their_grammar(tiny_model_dir: Path) -> None:
    """A KV pool too small for the batch: sequences are preempted and recomputed; recomputing
    samples none of their accepted tokens again, so each matcher stays where its tokens are.
    Prefix caching is off: with it on, this pool livelocks the scheduler (waiting sequences keep
    the cached blocks they took while not admitted), with or without guided decoding."""
    block_bytes = 2 * 2 * 2 * 4 * 16 * 4  # tiny: layers * (k, v) * kv heads * block * dim * fp32
    small = LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cpu", block_size=4,
                                   kv_cache_bytes=48 * block_bytes, enable_prefix_caching=False))
    prompts = [_prompt(small, f"prompt number {i} asks for json") for i in range(6)]
    outs = small.generate(prompts, [_guided(GUIDED, s) for s in range(6)])
    assert small.stats().num_preempted_total > 0
    for out in outs:
        assert out.finish_reason == "stop", out.new_text
        jsonschema.validate(json.loads(out.new_text), SCHEMA)


def test_rows_past_the_tokenizer_and_eos_are_masked(eng: LLMEngine) -> None:
    """The embedding may be wider than the tokenizer: those rows are never allowed; EOS is
    allowed only where the grammar accepts."""
    wide = eng.model_config.vocab_size + 40
    decoder = GuidedDecoder(eng.tokenizer, wide, eng.eos_ids)
    spec = GuidedDecoding("tool_calls", json.dumps(CALL), begin="<tool_call>", end="</tool_call>",
                          repeat=True)
    m = decoder.matcher(spec)
    eos = min(eng.eos_ids)
    logits = torch.zeros(2, wide)
    masked = decoder.mask(logits, [m, None])
    assert torch.isinf(masked[0, eng.model_config.vocab_size:]).all()
    assert torch.isinf(masked[0, eos]) and not torch.isinf(masked[1]).any()
    assert masked.data_ptr() != logits.data_ptr() and not torch.isinf(logits).any()
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    for token in eng.tokenizer.encode(text, add_special_tokens=False):
        m.accept(token)
    assert not m.done  # another call may follow
    assert not torch.isinf(decoder.mask(logits, [m, None])[0, eos])  # or the end


def test_a_spec_is_compiled_once(eng: LLMEngine) -> None:
    a, b = eng.guided.matcher(GUIDED), eng.guided.matcher(GUIDED)
    assert a.matcher is not b.matcher
    assert list(eng.guided._compiled).count(GUIDED) == 1


@pytest.mark.parametrize(("schema", "named"), [
    ({"type": "array", "uniqueItems": True}, "unsupported keyword 'uniqueItems'"),
    ({"not": {"type": "string"}}, "unsupported keyword 'not'"),
    ({"if": {"type": "string"}, "then": {"maxLength": 3}}, "unsupported keywords 'if', 'then'"),
    ({"type": "object", "properties": {"u": {"type": "string", "format": "uri-reference"}}},
     "unsupported format 'uri-reference'"),
    ({"type": "strng"}, "strng"),
])
def test_unenforceable_schemas_are_refused_by_name(eng: LLMEngine, schema: dict[str, Any],
                                                   named: str) -> None:
    spec = GuidedDecoding("json_schema", json.dumps(schema))
    with pytest.raises(GuidedDecodingError, match=re.escape(named)):
        check_guided(spec)
    with pytest.raises(GuidedDecodingError, match=re.escape(named)):
        eng.add_request("refused", _prompt(eng), _guided(spec, 0))
    assert "refused" not in eng.seqs


def test_a_schema_that_is_not_json_is_refused() -> None:
    with pytest.raises(GuidedDecodingError, match="not valid JSON"):
        check_guided(GuidedDecoding("json_schema", "{not json"))
    with pytest.raises(GuidedDecodingError, match="must be a JSON object"):
        check_guided(GuidedDecoding("json_schema", "[1, 2]"))


def test_a_grammar_that_can_only_end_ends_before_min_tokens(tiny_model_dir: Path) -> None:
    """min_tokens holds back EOS; a grammar whose value is complete ends the request all the
    same (the matcher stops), rather than the sampler drawing from an empty distribution."""
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20))
    schema = {"type": "integer", "minimum": 0, "maximum": 9}
    spec = GuidedDecoding("json_schema", json.dumps(schema))
    outs = engine.generate([[5, 6, 7]] * 3, [
        SamplingParams(max_tokens=24, min_tokens=20, temperature=t, seed=i, guided=spec)
        for i, t in enumerate((0.0, 1.0, 2.0))])
    for out in outs:
        assert 0 <= json.loads(out.new_text) <= 9 and out.finish_reason == "stop"
