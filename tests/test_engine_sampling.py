"""Sampling and stopping through the real engine on the tiny checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from aruntime.engine.config import EngineConfig
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def eng(tiny_model_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cpu", block_size=4,
                                  kv_cache_bytes=4 * 1024 * 1024, max_num_batched_tokens=48))


def prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 1000) for _ in range(n)]


def test_seeded_sampling_does_not_depend_on_the_batch(eng: LLMEngine) -> None:
    p = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)
    alone = eng.generate([prompt(12, 0)], p)[0].new_token_ids
    others = [SamplingParams(max_tokens=10, temperature=0.8, ignore_eos=True)] * 3
    batched = eng.generate([prompt(30, 1), prompt(12, 0), prompt(7, 2), prompt(5, 3)],
                           [others[0], p, others[1], others[2]])
    assert batched[1].new_token_ids == alone
    other_seed = eng.generate([prompt(12, 0)], SamplingParams(
        max_tokens=10, temperature=1.0, top_p=0.9, seed=99, ignore_eos=True))[0]
    assert other_seed.new_token_ids != alone


def test_top_k_one_is_greedy(eng: LLMEngine) -> None:
    greedy = eng.generate([prompt(9, 4)], SamplingParams(max_tokens=8, temperature=0.0,
                                                         ignore_eos=True))
    top1 = eng.generate([prompt(9, 4)], SamplingParams(max_tokens=8, temperature=1.5, top_k=1,
                                                       ignore_eos=True))
    assert top1[0].new_token_ids == greedy[0].new_token_ids


def test_stop_token_and_length(eng: LLMEngine) -> None:
    full = eng.generate([prompt(10, 5)], SamplingParams(max_tokens=8, temperature=0.0,
                                                        ignore_eos=True))[0]
    assert full.finish_reason == "length" and len(full.new_token_ids) == 8
    stop_id = full.new_token_ids[3]
    first = full.new_token_ids.index(stop_id)
    out = eng.generate([prompt(10, 5)], SamplingParams(max_tokens=8, temperature=0.0,
                                                       ignore_eos=True,
                                                       stop_token_ids=(stop_id,)))[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    assert out.new_token_ids == full.new_token_ids[:first + 1]


def test_stop_string_truncates_text(eng: LLMEngine) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    full = eng.generate([prompt(10, 6)], params)[0]
    text = full.new_text
    assert len(text) > 6
    stop = text[3:6]
    cut = text.index(stop)
    out = eng.generate([prompt(10, 6)], SamplingParams(
        max_tokens=24, temperature=0.0, ignore_eos=True, stop=(stop, "\x00never")))[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.new_text == text[:cut]
    kept = eng.generate([prompt(10, 6)], SamplingParams(
        max_tokens=24, temperature=0.0, ignore_eos=True, stop=(stop,),
        include_stop_str_in_output=True))[0]
    assert kept.new_text == text[:cut] + stop


def test_logprobs(eng: LLMEngine) -> None:
    out = eng.generate([prompt(8, 7)], SamplingParams(max_tokens=4, temperature=0.0,
                                                      ignore_eos=True, logprobs=3))[0]
    assert out.logprobs is not None and len(out.logprobs) == 4
    for lp, tok in zip(out.logprobs, out.new_token_ids, strict=False):
        assert lp.token_id == tok and len(lp.top) == 3
        assert lp.top[0][0] == tok and abs(lp.top[0][1] - lp.logprob) < 1e-6 and lp.logprob <= 0


def test_abort_frees_blocks(eng: LLMEngine) -> None:
    eng.add_request("x", prompt(40, 8), SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    assert eng.stats().num_free_blocks < eng.stats().num_blocks
    eng.abort_request("x")
    assert not eng.has_unfinished_requests()
    assert eng.stats().num_free_blocks == eng.stats().num_blocks


@pytest.mark.parametrize("tokens, message", [
    ([], "empty"), (list(range(10_000)), "context"), ([5, -1], "token ids")])
def test_bad_prompts_are_refused(eng: LLMEngine, tokens: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        eng.add_request("bad", tokens, SamplingParams())
    assert not eng.has_unfinished_requests()
