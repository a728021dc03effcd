"""The whole decode step as one graph, the KV cache its explicit inputs and outputs, on the tiny
model: run eagerly and on ONNX Runtime it passes the gate and decodes greedily like the paged
path — in mixed batches, over prefix-cache hits; a graph perturbed on purpose is refused,
naming it, the bucket and the difference; `auto` takes a graph variant where the stored table
says it is cheapest; a graph that fails while serving hands the step to eager."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny_engine import config, fails_on_two_rows, prompt
from torch import nn

from aruntime.engine.backends import registry
from aruntime.engine.backends.base import Compiled, Dynamic
from aruntime.engine.backends.eager import EagerBackend
from aruntime.engine.backends.gate import GateRefused
from aruntime.engine.backends.parts import compile_parts
from aruntime.engine.backends.table import CostTable, table_path
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
SHARED = prompt(40, 99)  # three blocks every prompt below starts with: cache hits
PROMPTS = [SHARED + prompt(n, seed) for seed, n in enumerate((1, 9, 30))] + [prompt(5, 7)]


class PerturbedGraph(EagerBackend):
    """Eager, with a small error added to the decode graph's logits on purpose."""

    name = "perturbed"

    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...],
                activations: Dynamic, cache_dir: Path, key: str) -> Compiled:
        run = super().compile(part, examples, activations, cache_dir, key)
        if type(part).__name__ != "DecodeGraph":
            return run
        return lambda *inputs: (run(*inputs)[0] + 1e-2, *run(*inputs)[1:])


class FailingGraph(EagerBackend):
    """Eager whose decode graph raises on a step of two rows (the gate never probes two)."""

    name = "failing"

    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...],
                activations: Dynamic, cache_dir: Path, key: str) -> Compiled:
        run = super().compile(part, examples, activations, cache_dir, key)
        return fails_on_two_rows(run) if type(part).__name__ == "DecodeGraph" else run


@pytest.fixture(scope="module")
def eager(tiny_model_dir: Path) -> LLMEngine:
    return LLMEngine(config(tiny_model_dir))


@pytest.fixture(scope="module")
def backends_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("graph")


@pytest.fixture
def registered() -> Iterator[None]:
    registry.BACKENDS["perturbed"], registry.BACKENDS["failing"] = PerturbedGraph, FailingGraph
    yield
    del registry.BACKENDS["perturbed"], registry.BACKENDS["failing"]


def greedy(engine: LLMEngine, prompts: list[list[int]] = PROMPTS) -> list[list[int]]:
    return [o.new_token_ids for o in engine.generate(prompts, GREEDY)]


@pytest.mark.parametrize("name", ["eager+graph", "onnxruntime+graph"])
def test_the_decode_graph_decodes_like_the_paged_path(
        name: str, tiny_model_dir: Path, backends_dir: Path, eager: LLMEngine) -> None:
    engine = LLMEngine(dataclasses.replace(config(tiny_model_dir), backends=name,
                                           backends_dir=str(backends_dir)))
    want = greedy(eager)
    assert greedy(engine) == want  # the shared prefix computed once, then hit
    assert greedy(engine) == want  # every prompt's blocks cached now
    dispatch = engine.runner.dispatch
    assert dispatch is not None and dispatch.graph_of(name) is not None
    assert dispatch.used.get(name, 0) > 0


def test_a_perturbed_graph_is_refused_naming_it_the_bucket_and_the_difference(
        eager: LLMEngine, backends_dir: Path, registered: None) -> None:
    with pytest.raises(GateRefused, match=r"perturbed\+graph: part decode graph, bucket 1 "
                                          r"rows: largest difference 0\.01 > "):
        compile_parts(eager.runner.model, "perturbed+graph", backends_dir / "cache")


def test_auto_takes_a_graph_variant_where_the_table_says_it_is_cheapest(
        tiny_model_dir: Path, backends_dir: Path, eager: LLMEngine) -> None:
    table = CostTable(eager.revision, "float32", "test", {},
                      {"decode/4": {"eager": 2.0, "eager+graph": 1.0},
                       "prefill/64": {"eager": 1.0, "eager+graph": 2.0}})
    table.save(table_path(backends_dir, eager.revision, "float32"))
    engine = LLMEngine(dataclasses.replace(config(tiny_model_dir), backends="auto",
                                           backends_dir=str(backends_dir)))
    assert greedy(engine) == greedy(eager)
    dispatch = engine.runner.dispatch
    assert dispatch is not None and dispatch.used.get("eager+graph", 0) > 0


def test_a_graph_that_fails_while_serving_hands_the_step_to_eager(
        tiny_model_dir: Path, backends_dir: Path, eager: LLMEngine, registered: None) -> None:
    engine = LLMEngine(dataclasses.replace(config(tiny_model_dir), backends="failing+graph",
                                           backends_dir=str(backends_dir)))
    two = PROMPTS[:2]
    assert greedy(engine, two) == greedy(eager, two)
    assert engine.runner.dispatch is not None
    assert "failing+graph" not in engine.runner.dispatch.compiled  # eager from then on
