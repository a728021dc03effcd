"""Tensor and pipeline parallelism on CPU with gloo: the tiny model sharded over 2 ranks (each
its own attention heads, KV head and MLP columns), over 4 (fewer KV heads than ranks: each KV
head replicated on the ranks whose query heads use it), split into 2 pipeline stages of a
layer each, and both at once (2 stages of 2 shards), answers token for token as one rank does,
with logprobs within 1e-4, in mixed batches (prefill beside decode, chunked prefill) and with
prefix-cache hits; a model that does not divide is refused naming why."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from aruntime.engine.config import EngineConfig, ModelConfig
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.loader import load_checkpoint
from aruntime.engine.parallel.shard import Shard, check_shardable, kv_heads_of, local_weights
from aruntime.engine.sampling import SamplingParams

PROMPTS = [[5, 9, 12, 40, 41, 7, 300, 2, 18, 90, 11, 4, 4, 61, 77, 8, 19, 23],
           [7, 7, 3], [5, 9, 12, 40, 41, 7, 300, 2, 18, 90, 11, 4, 4, 61, 77, 8, 500, 1],
           list(range(100, 160))]
PARAMS = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=0)


def config(model: Path, tp: int, pp: int = 1) -> EngineConfig:
    # a small token budget: long prompts are prefilled in chunks beside running decodes
    return EngineConfig(model=str(model), kv_cache_bytes=1 << 21, block_size=4,
                        max_num_batched_tokens=24, tensor_parallel=tp, pipeline_parallel=pp)


def answers(engine: LLMEngine) -> list[tuple[list[int], list[float]]]:
    outs = engine.generate(PROMPTS, PARAMS)
    return [(o.new_token_ids, [lp.logprob for lp in o.logprobs or []]) for o in outs]


@pytest.fixture(scope="module")
def single(tiny_model_dir: Path) -> list[tuple[list[int], list[float]]]:
    return answers(LLMEngine(config(tiny_model_dir, 1)))


@pytest.fixture(scope="module", params=[(2, 1), (4, 1), (1, 2), (2, 2)],
                ids=["tp2", "tp4", "pp2", "tp2xpp2"])
def parallel(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[LLMEngine]:
    engine = LLMEngine(config(tiny_model_dir, *request.param))
    try:
        yield engine
    finally:
        engine.close()


def test_a_sharded_engine_answers_as_one_rank_does(
        parallel: LLMEngine, single: list[tuple[list[int], list[float]]]) -> None:
    first = answers(parallel)
    again = answers(parallel)  # the same prompts: their blocks are prefix-cache hits now
    assert parallel.stats().prefix_hit_tokens_total > 0
    for got in (first, again):
        assert [tokens for tokens, _ in got] == [tokens for tokens, _ in single]
        for (_, lps), (_, want) in zip(got, single, strict=True):
            assert torch.allclose(torch.tensor(lps), torch.tensor(want), atol=1e-4)


def test_each_rank_holds_its_share_and_a_replicated_kv_head(tiny_model_dir: Path) -> None:
    mc = load_checkpoint(str(tiny_model_dir)).config  # 4 heads, 2 KV heads
    assert [kv_heads_of(mc, Shard(r, 2)) for r in range(2)] == [range(0, 1), range(1, 2)]
    assert [kv_heads_of(mc, Shard(r, 4)) for r in range(4)] == [
        range(0, 1), range(0, 1), range(1, 2), range(1, 2)]
    ckpt = load_checkpoint(str(tiny_model_dir))
    whole = ckpt.weights(None)
    parts = [local_weights(whole, mc, Shard(r, 2)) for r in range(2)]
    q = "layers.0.self_attn.q_proj.weight"
    assert torch.equal(torch.cat([p[q] for p in parts]), whole["model." + q]
                       if "model." + q in whole else whole[q])


def test_a_model_that_does_not_divide_is_refused(tiny_model_dir: Path) -> None:
    mc: ModelConfig = load_checkpoint(str(tiny_model_dir)).config
    with pytest.raises(ValueError, match="attention heads do not divide by 3"):
        check_shardable(mc, 3)
    with pytest.raises(ValueError, match="KV heads"):
        check_shardable(dataclasses.replace(mc, num_attention_heads=6,
                                            num_key_value_heads=2, intermediate_size=96), 3)
    with pytest.raises(ValueError, match="compiled --backends"):
        EngineConfig(model=str(tiny_model_dir), tensor_parallel=2, backends="auto")


def test_a_rank_killed_mid_stream_fails_the_step_clearly(tiny_model_dir: Path) -> None:
    from aruntime.engine.parallel.group import RankLostError

    engine = LLMEngine(config(tiny_model_dir, 2))
    try:
        engine.add_request("r", PROMPTS[0], PARAMS)
        engine.step()  # the prompt's first chunk, both ranks
        assert engine.group is not None
        rank1 = engine.group.procs[0]
        rank1.kill()
        rank1.wait()
        with pytest.raises(RankLostError, match="parallel rank is gone"):
            while engine.has_unfinished_requests():
                engine.step()
    finally:
        engine.close()  # returns: the dead rank is not waited on for a broadcast
    assert engine.group is None


def test_a_server_with_tensor_parallel_answers_as_one_rank_does(tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    import httpx

    from aruntime.serve.launch import background_server

    want = LLMEngine(config(tiny_model_dir, 1)).generate([PROMPTS[0]], PARAMS)[0].new_text
    with background_server(config(tiny_model_dir, 2), tmp_path, served_model_name="tiny") as srv:
        got = httpx.post(f"{srv.url}/v1/completions", timeout=60, json={
            "model": "tiny", "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0,
            "ignore_eos": True})
        assert got.status_code == 200, got.text
        assert got.json()["choices"][0]["text"] == want


def test_a_tensor_parallel_group_is_one_worker_to_the_router(tiny_model_dir: Path,
                                                             tmp_path: Path) -> None:
    import httpx

    from aruntime.serve.launch import background_server

    want = LLMEngine(config(tiny_model_dir, 1)).generate(PROMPTS[:2], PARAMS)
    with background_server(config(tiny_model_dir, 2), tmp_path, served_model_name="tiny",
                           workers=2, router_policy="round-robin") as srv:
        assert sorted(srv.app.state.server.client.registry) == ["w0", "w1"]
        for _ in range(2):  # round robin: each prompt once on each group
            for prompt, out in zip(PROMPTS[:2], want, strict=True):
                got = httpx.post(f"{srv.url}/v1/completions", timeout=60, json={
                    "model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0,
                    "ignore_eos": True})
                assert got.json()["choices"][0]["text"] == out.new_text
