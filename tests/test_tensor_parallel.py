"""Tensor and pipeline parallelism on CPU with gloo: the tiny model sharded over 2 ranks (each
its own attention heads, KV head and MLP columns), over 4 (fewer KV heads than ranks: each KV
head replicated on the ranks whose query heads use it), split into 2 pipeline stages of a
layer each, and both at once (2 stages of 2 shards), answers token for token as one rank does,
with logprobs within 1e-4, in mixed batches (prefill beside decode, chunked prefill) and with
prefix-cache hits; a model that does not divide is refused naming why; a rank killed
mid-stream fails its requests and the group restarts, in the engine and behind the server."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from aruntime.engine.config import EngineConfig, ModelConfig
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.loader import load_checkpoint
from aruntime.engine.parallel.shard import (
    Shard,
    check_shardable,
    kv_heads_of,
    local_weights,
    q_heads_of,
)
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.config import KVConfig

PROMPTS = [[5, 9, 12, 40, 41, 7, 300, 2, 18, 90, 11, 4, 4, 61, 77, 8, 19, 23],
           [7, 7, 3], [5, 9, 12, 40, 41, 7, 300, 2, 18, 90, 11, 4, 4, 61, 77, 8, 500, 1],
           list(range(100, 160))]
PARAMS = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=0)


def config(model: Path, tp: int, pp: int = 1) -> EngineConfig:
    # a small token budget: long prompts are prefilled in chunks beside running decodes
    # and pipeline steps cut into micro-batches however few their tokens
    return EngineConfig(model=str(model), kv_cache_bytes=1 << 21, block_size=4,
                        max_num_batched_tokens=24, tensor_parallel=tp, pipeline_parallel=pp,
                        micro_batch_tokens=1)


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


def test_a_group_saves_whole_kv_blocks_that_restore_under_any_layout(
        tiny_model_dir: Path, tmp_path: Path,
        single: list[tuple[list[int], list[float]]]) -> None:
    """The disk tier under TP=2×PP=2 holds whole blocks: one rank, and a TP=2 group, restore
    them (nothing on their devices) and answer as one rank does."""
    kv = KVConfig(disk_dir=str(tmp_path / "kv"), disk_bytes=1 << 26)
    for tp, pp in ((2, 2), (1, 1), (2, 1)):
        engine = LLMEngine(dataclasses.replace(config(tiny_model_dir, tp, pp), kv=kv))
        try:
            got = answers(engine)
            assert (engine.stats().tier_hit_tokens_total > 0) == ((tp, pp) != (2, 2))
        finally:
            engine.close()
        assert [tokens for tokens, _ in got] == [tokens for tokens, _ in single]
        for (_, lps), (_, want) in zip(got, single, strict=True):
            assert torch.allclose(torch.tensor(lps), torch.tensor(want), atol=1e-4)


def test_kv_groups_that_do_not_divide_split_unevenly(tmp_path: Path) -> None:
    """The default model's shape (9 heads, 3 KV heads) over 2 ranks: 2 KV groups and 1, and
    the answers of one rank."""
    from aruntime.engine.demo import write_demo_model

    model = write_demo_model(tmp_path / "gqa3", size="tiny-gqa3")
    mc = load_checkpoint(str(model)).config
    assert [(q_heads_of(mc, Shard(r, 2)), kv_heads_of(mc, Shard(r, 2))) for r in range(2)] == [
        (range(0, 6), range(0, 2)), (range(6, 9), range(2, 3))]
    want = answers(LLMEngine(config(model, 1)))
    engine = LLMEngine(config(model, 2))
    try:
        got = answers(engine)
    finally:
        engine.close()
    assert [tokens for tokens, _ in got] == [tokens for tokens, _ in want]
    for (_, lps), (_, ref) in zip(got, want, strict=True):
        assert torch.allclose(torch.tensor(lps), torch.tensor(ref), atol=1e-4)


def test_a_pipeline_step_is_cut_into_micro_batches_at_chunk_boundaries() -> None:
    from aruntime.engine.parallel.pipeline import micro_steps
    from aruntime.engine.runner import PlainStep

    # two decodes (rows 0, 1), then prefill chunks of 5 (rows 2-6) and 3 tokens (rows 7-9);
    # the logits rows: the three that sample, then prompt logprobs rows 2-3
    step = PlainStep(list(range(10)), list(range(10)), list(range(10)),
                     [(2, 5, 0, [0, 1]), (7, 3, 4, [2, 3])], [[4], [5]], [3, 4], [0, 1, 6, 9, 2, 3])
    parts, place = micro_steps(step, 2, 1)
    assert [p.token_ids for p in parts] == [list(range(0, 7)), list(range(7, 10))]
    assert [p.prefills for p in parts] == [[(2, 5, 0, [0, 1])], [(0, 3, 4, [2, 3])]]
    assert [p.decode_lens for p in parts] == [[3, 4], []]
    starts = [0, 7]
    laid = [r + starts[i] for i, p in enumerate(parts) for r in p.rows]
    assert [laid[i] for i in place] == step.rows
    assert len(micro_steps(step, 8, 1)[0]) == 4  # no finer than its chunks
    assert len(micro_steps(step, 2, 6)[0]) == 1  # no part under 6 tokens
    assert len(micro_steps(PlainStep([1, 2], [0, 1], [0, 1], [(0, 2, 0, [0])], [], [], [1]),
                           2, 1)[0]) == 1  # one chunk is one part


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
    with pytest.raises(ValueError, match="2 KV heads are fewer than the ranks, and 3 ranks"):
        check_shardable(mc, 3)  # 4 heads, 2 KV heads
    with pytest.raises(ValueError, match="do not split their 6 attention heads"):
        check_shardable(dataclasses.replace(mc, num_attention_heads=6,
                                            num_key_value_heads=1, intermediate_size=96), 4)
    check_shardable(mc, 2)
    with pytest.raises(ValueError, match="compiled --backends"):
        EngineConfig(model=str(tiny_model_dir), tensor_parallel=2, backends="auto")


def test_a_rank_killed_mid_stream_fails_the_step_and_the_group_restarts(
        tiny_model_dir: Path, single: list[tuple[list[int], list[float]]]) -> None:
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
        engine.recover_group()
        assert not engine.has_unfinished_requests() and engine.group.restarts == 1
        assert engine.pool.num_free == engine.pool.num_blocks
        assert [tokens for tokens, _ in answers(engine)] == [tokens for tokens, _ in single]
    finally:
        engine.close()  # returns: the dead rank is not waited on for a broadcast
    assert engine.group is None


def _rank_pids(core_pid: int) -> list[int]:
    """The parallel ranks an engine core process started."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == core_pid and b"aruntime.engine.parallel.rank" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def test_a_server_with_tensor_parallel_answers_and_survives_a_lost_rank(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """It answers as one rank does; a rank killed mid-stream ends that stream with the API's
    error (503's shape, naming the lost rank), and the next request is answered as before by
    the restarted group."""
    import os
    import signal

    import httpx

    from aruntime.serve.launch import background_server

    want = LLMEngine(config(tiny_model_dir, 1)).generate([PROMPTS[0]], PARAMS)[0].new_text
    body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0,
            "ignore_eos": True}
    with background_server(config(tiny_model_dir, 2), tmp_path, served_model_name="tiny") as srv:
        got = httpx.post(f"{srv.url}/v1/completions", timeout=60, json=body)
        assert got.status_code == 200, got.text
        assert got.json()["choices"][0]["text"] == want
        core_pid = srv.app.state.server.client.registry["w0"].pid
        long = {**body, "max_tokens": 400, "stream": True}
        with httpx.stream("POST", f"{srv.url}/v1/completions", json=long, timeout=60) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))
            (rank1,) = _rank_pids(core_pid)
            os.kill(rank1, signal.SIGKILL)
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and '"error"' in rest[-2], rest[-3:]
        assert "parallel rank is gone" in rest[-2]
        again = httpx.post(f"{srv.url}/v1/completions", timeout=60, json=body)
        assert again.status_code == 200, again.text
        assert again.json()["choices"][0]["text"] == want
        assert _rank_pids(core_pid) and _rank_pids(core_pid) != [rank1]
        metrics = httpx.get(f"{srv.url}/metrics", timeout=30).text
        assert 'aruntime:parallel_rank_restarts_total{model_name="tiny"} 1.0' in metrics


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
