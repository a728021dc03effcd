"""The engine computes the same function as Hugging Face transformers' own implementation:
logits within 1e-4 (fp32), and identical greedy tokens alone, in mixed continuous batches, with
prefix-cache hits and after preemption."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from aruntime.engine.config import EngineConfig
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams
from aruntime.engine.sequence import Sequence

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def ckpt(request: pytest.FixtureRequest, tiny_model_dir: Path, tiny_qwen_dir: Path) -> Path:
    return tiny_model_dir if request.param == "llama" else tiny_qwen_dir


@pytest.fixture(params=[True, False], ids=["native-decode", "torch-decode"])
def native(request: pytest.FixtureRequest) -> bool:
    """Both decode-attention backends must compute the same function."""
    return bool(request.param)


def hf_model(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


def engine(path: Path, **kw: object) -> LLMEngine:
    kw.setdefault("kv_cache_bytes", 8 * 1024 * 1024)
    return LLMEngine(EngineConfig(model=str(path), device="cpu", **kw))  # type: ignore[arg-type]


def test_logits_match_transformers(ckpt: Path, native: bool) -> None:
    eng = engine(ckpt, block_size=4, max_num_batched_tokens=7, native_kernels=native)
    assert (eng.runner.native is not None) == native
    hf = hf_model(ckpt)
    for prompt in prompts(eng.model_config.vocab_size, [1, 5, 23]):
        seq = Sequence("p", prompt, GREEDY, eng.key_scheme.root())
        eng.scheduler.add(seq)
        for _ in range(6):  # chunked prefill (budget 7), then decode steps over the paged cache
            sched = eng.scheduler.schedule()
            sampling, logits, _ = eng.runner.execute(sched)
            for c in sched.chunks:
                eng.scheduler.on_computed(c)
            if not sampling:
                continue
            with torch.no_grad():
                ref = hf(torch.tensor([seq.token_ids])).logits[0, -1]
            assert torch.allclose(logits[0], ref, atol=1e-4, rtol=0), (logits[0] - ref).abs().max()
            seq.token_ids.append(int(ref.argmax()))
        eng.scheduler.finish(seq)


def test_greedy_alone_batched_cached_preempted(ckpt: Path, native: bool) -> None:
    hf = hf_model(ckpt)
    eng = engine(ckpt, block_size=4, max_num_batched_tokens=32, native_kernels=native)
    vocab = eng.model_config.vocab_size
    shared = prompts(vocab, [20], seed=7)[0]
    batch = prompts(vocab, [3, 9, 17, 30, 41]) + [shared + p for p in prompts(vocab, [2, 6, 11], 3)]
    expected = [hf_greedy(hf, p, GREEDY.max_tokens) for p in batch]

    alone = [eng.generate([p], GREEDY)[0].new_token_ids for p in batch]
    assert alone == expected

    mixed = eng.generate(batch, GREEDY)  # chunked prefill mixed with decodes, prefix hits
    assert [o.new_token_ids for o in mixed] == expected
    assert eng.stats().prefix_hit_tokens_total > 0
    assert any(o.num_cached_tokens >= 16 for o in mixed)

    # A pool of 24 four-token blocks cannot hold the batch at once: sequences get preempted.
    small = engine(ckpt, block_size=4, max_num_batched_tokens=32, native_kernels=native,
                   kv_cache_bytes=24 * _block_bytes(eng))
    outs = small.generate(batch, GREEDY)
    assert small.stats().num_preempted_total > 0
    assert [o.new_token_ids for o in outs] == expected
    assert small.stats().num_free_blocks == small.stats().num_blocks


def _block_bytes(eng: LLMEngine) -> int:
    return eng.model_config.kv_bytes_per_token() * eng.config.block_size


def test_sliding_window_caps_the_context(tmp_path: Path) -> None:
    """Mistral-style sliding attention is served only within its window, where it is exact."""
    import json

    from aruntime.engine.demo import write_demo_model

    path = write_demo_model(tmp_path / "mistral", size="tiny", architecture="MistralForCausalLM")
    cfg = json.loads((path / "config.json").read_text())
    cfg["sliding_window"] = 64
    (path / "config.json").write_text(json.dumps(cfg))
    eng = engine(path)
    assert eng.max_model_len == 64
    with pytest.raises(ValueError, match="context"):
        eng.add_request("long", list(range(100, 170)), GREEDY)
    hf = hf_model(path)
    prompt = prompts(eng.model_config.vocab_size, [20], seed=9)[0]
    assert (eng.generate([prompt], GREEDY)[0].new_token_ids
            == hf_greedy(hf, prompt, GREEDY.max_tokens))


def _transformers5_llama3(tmp_path: Path) -> Path:
    """The tiny checkpoint with a config.json as transformers 5 writes a Llama 3.1 one: rope
    theta and the llama3 scaling under `rope_parameters`, nothing at the top level."""
    import json

    from transformers import LlamaConfig

    from aruntime.engine.demo import write_demo_model

    path = write_demo_model(tmp_path / "llama3", size="tiny")
    cfg = json.loads((path / "config.json").read_text())
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}
    keep = {k: v for k, v in cfg.items() if k not in ("rope_theta", "rope_scaling")}
    LlamaConfig(**keep, rope_parameters=rope).save_pretrained(path)
    return path


def test_a_transformers5_rope_parameters_config_matches_transformers(tmp_path: Path) -> None:
    import json

    path = _transformers5_llama3(tmp_path)
    written = json.loads((path / "config.json").read_text())
    assert "rope_theta" not in written and written["rope_parameters"]["rope_type"] == "llama3"
    eng = engine(path, block_size=4)
    assert eng.model_config.rope_theta == 500000.0
    hf = hf_model(path)
    for prompt in prompts(eng.model_config.vocab_size, [9, 60]):
        ref = hf_greedy(hf, prompt, GREEDY.max_tokens)
        assert eng.generate([prompt], GREEDY)[0].new_token_ids == ref
        seq = Sequence("p", prompt, GREEDY, eng.key_scheme.root())
        eng.scheduler.add(seq)
        sched = eng.scheduler.schedule()
        _, logits, _ = eng.runner.execute(sched)
        with torch.no_grad():
            want = hf(torch.tensor([prompt])).logits[0, -1]
        assert torch.allclose(logits[0], want, atol=1e-4, rtol=0), (logits[0] - want).abs().max()
        for c in sched.chunks:
            eng.scheduler.on_computed(c)
        eng.scheduler.finish(seq)


@pytest.mark.parametrize("spelling", ["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 4.0},
                                  {"type": "dynamic", "factor": 2.0},
                                  {"rope_type": "llama3", "factor": 8.0}])
def test_a_rope_the_engine_cannot_compute_is_refused(spelling: str, rope: dict) -> None:
    from aruntime.engine.config import ModelConfig, ModelConfigError

    cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           spelling: rope}
    kind = rope.get("rope_type") or rope.get("type")
    with pytest.raises(ModelConfigError, match=rf"rope.*{kind}"):
        ModelConfig.from_hf(cfg)


def test_preemption_with_shared_prefixes_does_not_livelock(tiny_model_dir: Path) -> None:
    """A preempted sequence goes back ahead of a waiting one; had the waiting one kept the prefix
    blocks it took, the pool could never fit the head again once nothing ran (seen: every step
    empty, forever). Each finishes, with the tokens it gets alone."""
    eng = engine(tiny_model_dir, block_size=4, kv_cache_bytes=48 * 2048)
    assert eng.pool.num_blocks == 48
    batch = [[5 + i % 3] * 8 + [20 + i, 21, 22, 23, 24] for i in range(6)]
    params = SamplingParams(max_tokens=70, temperature=0.0, ignore_eos=True)
    for i, p in enumerate(batch):
        eng.add_request(f"r{i}", p, params)
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(6)}
    for _ in range(2000):  # finishes in ~140 steps; the livelock never did
        if not eng.has_unfinished_requests():
            break
        for out in eng.step():
            tokens[out.request_id] += out.new_token_ids
    assert not eng.has_unfinished_requests() and eng.scheduler.num_preemptions > 0
    alone = engine(tiny_model_dir, block_size=4)
    assert [tokens[f"r{i}"] for i in range(6)] == [
        o.new_token_ids for o in alone.generate(batch, params)]
