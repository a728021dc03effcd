"""Penalties, logit_bias and min_tokens (engine/logits_processors.py) on real logits of the tiny
checkpoint: equal to transformers' processors and OpenAI's formula, and through the engine."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, RepetitionPenaltyLogitsProcessor

from aruntime.engine.config import EngineConfig
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.logits_processors import LogitsProcessors
from aruntime.engine.sampling import SamplingParams

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def eng(tiny_model_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cpu", block_size=4,
                                  kv_cache_bytes=8 * 1024 * 1024, max_num_seqs=16))


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 1000) for _ in range(n)]


def greedy(**kw: object) -> SamplingParams:
    kw.setdefault("max_tokens", 12)
    return SamplingParams(temperature=0.0, ignore_eos=True, **kw)  # type: ignore[arg-type]


def hf_logits(hf: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = hf(torch.tensor([ids])).logits[0, -1]
    return out


def processed(params: SamplingParams, prompt_ids: list[int], outputs: list[int],
              logits: torch.Tensor) -> torch.Tensor:
    procs = LogitsProcessors(logits.shape[-1], frozenset({2}), CPU)
    procs.add("r", prompt_ids, params)
    for tok in outputs:
        procs.record(["r"], [tok])
    return procs.apply(logits[None], ["r"])[0]


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_equals_transformers(hf: torch.nn.Module, penalty: float) -> None:
    ids = prompt(9, 1)
    outputs = [ids[2], 1500, 1500, 7]  # one output token also in the prompt, one twice
    logits = hf_logits(hf, ids + outputs)
    ours = processed(SamplingParams(repetition_penalty=penalty), ids, outputs, logits)
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([ids + outputs]),
                                                       logits[None].clone())[0]
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, logits)


def test_presence_and_frequency_follow_openai_formula(hf: torch.nn.Module) -> None:
    ids = prompt(7, 2)
    outputs = [11, 500, 11, 11, ids[0]]  # a prompt token counts only once it is generated
    logits = hf_logits(hf, ids + outputs)
    ours = processed(SamplingParams(presence_penalty=0.5, frequency_penalty=-1.25),
                     ids, outputs, logits)
    expected = logits.clone()
    for tok, count in Counter(outputs).items():
        expected[tok] -= count * -1.25 + 0.5
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert ours[ids[1]] == logits[ids[1]]


def test_bias_and_min_tokens_mask(hf: torch.nn.Module) -> None:
    ids = prompt(5, 3)
    logits = hf_logits(hf, ids)
    params = SamplingParams(logit_bias=((40, 100.0), (41, -3.5)), min_tokens=2,
                            stop_token_ids=(9,))
    out = processed(params, ids, [], logits)
    assert out[40] == logits[40] + 100.0 and out[41] == logits[41] - 3.5
    assert out[9] == out[2] == float("-inf")  # the stop id and EOS, before min_tokens
    after = processed(params, ids, [5, 6], logits)
    assert after[9] == logits[9] and after[2] == logits[2]


def test_rows_that_ask_nothing_are_untouched(eng: LLMEngine) -> None:
    procs = LogitsProcessors(64, frozenset({2}), CPU)
    logits = torch.randn(3, 64)
    procs.add("plain", [1, 2, 3], SamplingParams())
    assert procs.apply(logits, ["plain", "plain", "unknown"]) is logits
    procs.add("pen", [1, 2, 3], SamplingParams(repetition_penalty=2.0))
    out = procs.apply(logits, ["plain", "pen", "unknown"])
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    assert not torch.equal(out[1], logits[1]) and torch.equal(out[1, 4:], logits[1, 4:])


def test_a_reused_slot_starts_from_zero() -> None:
    procs = LogitsProcessors(64, frozenset(), CPU)
    params = SamplingParams(frequency_penalty=1.0)
    for i in range(6):  # past the first growth, then reused
        procs.add(f"r{i}", [1], params)
        procs.record([f"r{i}"], [7])
    for i in range(6):
        procs.drop(f"r{i}")
    procs.add("fresh", [1], params)
    logits = torch.zeros(1, 64)
    assert torch.equal(procs.apply(logits, ["fresh"]), logits)
    assert procs.penalty.shape[0] == 8  # 4, then doubled once


# ---- through the engine ---------------------------------------------------------------------


def reference_greedy(hf: torch.nn.Module, ids: list[int], params: SamplingParams) -> list[int]:
    """Greedy decoding with the processors spelled out: transformers' repetition penalty, then
    OpenAI's presence/frequency formula and the bias, on transformers' own logits."""
    out: list[int] = []
    bias = dict(params.logit_bias)
    for _ in range(params.max_tokens):
        logits = hf_logits(hf, ids + out)[None]
        logits = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(
            torch.tensor([ids + out]), logits)[0]
        for tok, count in Counter(out).items():
            logits[tok] -= count * params.frequency_penalty + params.presence_penalty
        for tok, b in bias.items():
            logits[tok] += b
        out.append(int(logits.argmax()))
    return out


@pytest.mark.parametrize("kw", [
    {"repetition_penalty": 1.8},
    {"frequency_penalty": 1.5, "presence_penalty": 0.5},
    {"repetition_penalty": 1.2, "frequency_penalty": 0.5, "logit_bias": ((1200, 2.5),)},
], ids=["repetition", "presence-frequency", "all"])
def test_engine_matches_the_reference_in_a_batch(eng: LLMEngine, hf: torch.nn.Module,
                                                 kw: dict[str, object]) -> None:
    params = greedy(**kw)
    ids = prompt(8, 112)  # its greedy output repeats within 12 tokens: every penalty bites
    others = [prompt(6, 5), prompt(13, 6)]
    outs = eng.generate([others[0], ids, others[1]], [greedy(), params, greedy(max_tokens=5)])
    assert outs[1].new_token_ids == reference_greedy(hf, ids, params)
    plain = eng.generate([others[0], ids, others[1]], [greedy(), greedy(), greedy(max_tokens=5)])
    assert plain[1].new_token_ids != outs[1].new_token_ids
    assert [plain[0].new_token_ids, plain[2].new_token_ids] == [outs[0].new_token_ids,
                                                                outs[2].new_token_ids]


def test_frequency_penalty_breaks_a_repeating_greedy_output(eng: LLMEngine) -> None:
    prompts = [prompt(8, 100 + i) for i in range(16)]
    outs = eng.generate(prompts, greedy(max_tokens=40))
    distinct, i = min((len(set(o.new_token_ids)), i) for i, o in enumerate(outs))
    assert distinct <= 36, "no seeded prompt repeats; pick other seeds"
    for kw in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0},
               {"repetition_penalty": 2.0}):
        penalised = eng.generate([prompts[i]], greedy(max_tokens=40, **kw))[0].new_token_ids
        assert len(set(penalised)) > distinct, kw


def test_logit_bias_forces_and_bans(eng: LLMEngine) -> None:
    ids = prompt(9, 7)
    plain = eng.generate([ids], greedy(max_tokens=6))[0].new_token_ids
    forced = eng.generate([ids], greedy(max_tokens=6, logit_bias=((1234, 100.0),)))[0]
    assert forced.new_token_ids == [1234] * 6
    banned = eng.generate([ids], greedy(max_tokens=6, logit_bias=((plain[0], -100.0),)))[0]
    assert banned.new_token_ids[0] != plain[0] and plain[0] not in banned.new_token_ids


def test_logprobs_stay_the_models_own(eng: LLMEngine) -> None:
    ids = prompt(9, 8)
    plain = eng.generate([ids], greedy(max_tokens=1, logprobs=3))[0]
    biased = eng.generate([ids], greedy(max_tokens=1, logprobs=3,
                                        logit_bias=((1234, 100.0),)))[0]
    assert plain.logprobs is not None and biased.logprobs is not None
    assert biased.new_token_ids == [1234]
    top, plain_top = biased.logprobs[0].top, plain.logprobs[0].top
    assert [t for t, _ in top] == [t for t, _ in plain_top]  # prefix-cache hit: fp noise only
    assert [v for _, v in top] == pytest.approx([v for _, v in plain_top], abs=1e-5)
    assert biased.logprobs[0].logprob < plain.logprobs[0].top[-1][1]  # not ~0, as biased


def test_min_tokens_holds_back_eos_and_stop_ids(eng: LLMEngine) -> None:
    ids = prompt(9, 9)
    eos = min(eng.eos_ids)
    # A +100 bias makes EOS win every step it is not masked.
    out = eng.generate([ids], SamplingParams(max_tokens=10, temperature=0.0, min_tokens=3,
                                             logit_bias=((eos, 100.0),)))[0]
    assert len(out.new_token_ids) == 4 and out.new_token_ids[-1] == eos
    assert eos not in out.new_token_ids[:3] and out.finish_reason == "stop"
    stop = eng.generate([ids], greedy(max_tokens=10, min_tokens=5, stop_token_ids=(1234,),
                                      logit_bias=((1234, 100.0),)))[0]
    assert stop.new_token_ids[-1] == 1234 and len(stop.new_token_ids) == 6
    assert stop.finish_reason == "stop" and stop.stop_reason == 1234


def test_a_stop_string_before_min_tokens_is_passed_over(eng: LLMEngine) -> None:
    ids = prompt(10, 6)
    full = eng.generate([ids], greedy(max_tokens=24))[0]
    text = full.new_text
    stop = text[3:6]
    early = eng.generate([ids], greedy(max_tokens=24, stop=(stop,)))[0]
    assert early.new_text == text[:text.index(stop)] and early.finish_reason == "stop"
    late = eng.generate([ids], greedy(max_tokens=24, stop=(stop,), min_tokens=20))[0]
    assert late.new_text.startswith(text[:text.index(stop) + len(stop)])
    assert len(late.new_token_ids) >= 20


def test_out_of_vocabulary_bias_is_refused(eng: LLMEngine) -> None:
    vocab = eng.model_config.vocab_size
    with pytest.raises(ValueError, match="logit_bias"):
        eng.add_request("bad", [5, 6], greedy(logit_bias=((vocab, 1.0),)))
    assert "bad" not in eng.seqs and not eng.processors._requests


# ---- prompt logprobs (completions' echo with logprobs) -------------------------------------


def test_prompt_logprobs_equal_transformers(tiny_model_dir: Path, hf: torch.nn.Module) -> None:
    # Small chunks, so a prompt spans several steps; the prompt is in the prefix cache the
    # second time, which a request for prompt logprobs must not use (cached positions give no
    # logits).
    eng = LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cpu", block_size=4,
                                 kv_cache_bytes=8 * 1024 * 1024, max_num_batched_tokens=7))
    ids = prompt(19, 10)
    asked = greedy(max_tokens=2, prompt_logprobs=2)
    outs = eng.generate([ids, prompt(5, 11)], [asked, greedy(max_tokens=3)])
    outs += eng.generate([ids], asked)
    assert outs[2].num_cached_tokens == 0
    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0], dim=-1)
    for out in (outs[0], outs[2]):
        got = out.prompt_logprobs
        assert got is not None and len(got) == len(ids) and got[0] is None
        for i, entry in enumerate(got[1:]):
            assert entry is not None and entry.token_id == ids[i + 1]
            assert entry.logprob == pytest.approx(float(lp[i, ids[i + 1]]), abs=1e-4)
            assert [t for t, _ in entry.top] == lp[i].topk(2).indices.tolist()
    assert outs[1].prompt_logprobs is None
    one = eng.generate([[7]], asked)[0]
    assert one.prompt_logprobs == [None]


def test_prompt_logprobs_survive_preemption(tiny_model_dir: Path, eng: LLMEngine) -> None:
    # 24 four-token blocks cannot hold three 30-token prompts and their outputs, prefilled in
    # 16-token chunks: sequences are preempted mid-prompt and recomputed, positions seen twice.
    block = eng.model_config.kv_bytes_per_token() * 4
    small = LLMEngine(EngineConfig(model=str(tiny_model_dir), device="cpu", block_size=4,
                                   kv_cache_bytes=24 * block, max_num_batched_tokens=16))
    batch = [prompt(30, 20 + i) for i in range(3)]
    asked = greedy(max_tokens=8, prompt_logprobs=1)
    outs = small.generate(batch, asked)
    assert small.stats().num_preempted_total > 0
    for p, out in zip(batch, outs, strict=True):
        alone = eng.generate([p], asked)[0]
        assert out.new_token_ids == alone.new_token_ids
        assert out.prompt_logprobs is not None and alone.prompt_logprobs is not None
        assert len(out.prompt_logprobs) == len(p)
        assert [(e.token_id, round(e.logprob, 4)) for e in out.prompt_logprobs[1:] if e] == [
            (e.token_id, round(e.logprob, 4)) for e in alone.prompt_logprobs[1:] if e]
