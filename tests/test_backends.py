"""Compiled backends for the model's dense parts, on the tiny model: ONNX Runtime, OpenVINO and
IREE pass the equivalence gate (parts within tolerance, then greedy tokens on whole prompts);
a backend perturbed on purpose is refused, naming the part, the bucket and the difference;
`auto` runs each step on the backend a stored cost table says is cheapest for its phase and
bucket, and its greedy outputs equal eager's."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny_engine import config, fails_on_two_rows, prompt
from torch import nn

from aruntime.engine.backends import registry
from aruntime.engine.backends.base import Compiled
from aruntime.engine.backends.eager import EagerBackend
from aruntime.engine.backends.gate import GateRefused
from aruntime.engine.backends.parts import compile_parts
from aruntime.engine.backends.table import CostTable, bucket, table_path
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams

COMPILED = ("onnxruntime", "openvino", "iree")
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = [prompt(n, seed) for seed, n in enumerate((3, 17, 40, 70))]


class PerturbedBackend(EagerBackend):
    """Eager, with a small error added to the MLP part's output on purpose: what a broken
    compiler's output looks like to the gate."""

    name = "perturbed"

    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...], activations: int,
                cache_dir: Path, key: str) -> Compiled:
        run = super().compile(part, examples, activations, cache_dir, key)
        if type(part).__name__ != "AfterAttention":
            return run
        return lambda *inputs: tuple(t + 1e-3 for t in run(*inputs))


class FailingBackend(EagerBackend):
    """Eager that raises on two-row batches: a runtime that breaks while serving, after the
    gate (whose probes never have two rows) let it through."""

    name = "failing"

    def compile(self, part: nn.Module, examples: tuple[torch.Tensor, ...], activations: int,
                cache_dir: Path, key: str) -> Compiled:
        return fails_on_two_rows(super().compile(part, examples, activations, cache_dir, key))


@pytest.fixture(scope="module")
def backends_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backends")


@pytest.fixture(scope="module")
def eager(tiny_model_dir: Path) -> LLMEngine:
    return LLMEngine(config(tiny_model_dir))


@pytest.fixture
def perturbed() -> Iterator[None]:
    registry.BACKENDS["perturbed"] = PerturbedBackend
    yield
    del registry.BACKENDS["perturbed"]


def greedy(engine: LLMEngine) -> list[list[int]]:
    return [o.new_token_ids for o in engine.generate(PROMPTS, GREEDY)]


def test_three_compiled_backends_pass_the_gate_and_decode_like_eager(
        tiny_model_dir: Path, backends_dir: Path, eager: LLMEngine) -> None:
    engine = LLMEngine(dataclasses.replace(config(tiny_model_dir), backends=",".join(COMPILED),
                                           backends_dir=str(backends_dir)))
    dispatch = engine.runner.dispatch
    assert dispatch is not None and set(COMPILED) < set(dispatch.compiled)  # gated, each
    assert greedy(engine) == greedy(eager)
    assert dispatch.used == {"onnxruntime": dispatch.used["onnxruntime"]}  # the first listed
    assert any((backends_dir / "cache").glob("*.onnx")) and any(
        (backends_dir / "cache").glob("*.vmfb"))


def test_a_delegate_takes_its_part_and_eager_the_rest_gated_as_a_whole(
        tiny_model_dir: Path, tmp_path: Path, eager: LLMEngine) -> None:
    engine = LLMEngine(dataclasses.replace(config(tiny_model_dir), backends="onnxruntime@after",
                                           backends_dir=str(tmp_path)))
    assert greedy(engine) == greedy(eager)  # the greedy gate passed it, and so does this
    exported = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.onnx"))
    layers = eager.model_config.num_hidden_layers
    assert exported == [f"after{i}" for i in range(layers)]  # the MLP blocks, nothing else


def test_a_perturbed_backend_is_refused_naming_part_bucket_and_difference(
        eager: LLMEngine, backends_dir: Path, perturbed: None) -> None:
    with pytest.raises(GateRefused, match=r"perturbed: part after, bucket 1 rows: largest "
                                          r"difference 0\.001"):
        compile_parts(eager.runner.model, "perturbed", backends_dir / "cache")


def test_a_decode_step_is_costed_at_the_nearest_measured_context_at_or_above_its_own() -> None:
    table = CostTable("sha256:x", "float32", "test", {}, seconds={
        "decode/8/32": {"eager": 2.0, "onnxruntime+graph": 1.0},
        "decode/8/256": {"eager": 1.0, "onnxruntime+graph": 2.0},
        "prefill/64": {"eager": 1.0}})
    assert [table.choose("decode", 8, context=c) for c in (10, 32, 33, 256, 4000)] == \
        ["onnxruntime+graph", "onnxruntime+graph", "eager", "eager", "eager"]
    assert table.choose("decode", 8) == "eager"  # no context: the plain bucket (not measured)
    assert table.key("prefill", 50, 900) == "prefill/64"  # contexts are a decode's


def test_auto_takes_the_cheapest_backend_per_phase_and_bucket_from_the_table(
        tiny_model_dir: Path, backends_dir: Path, eager: LLMEngine) -> None:
    table = CostTable(eager.revision, "float32", "test", {}, seconds={
        "decode/1": {"eager": 3e-3, "onnxruntime": 1e-3, "openvino": 2e-3},
        "decode/4": {"eager": 3e-3, "openvino": 1e-3, "onnxruntime": 2e-3},
        "prefill/64": {"eager": 3e-3, "iree": 1e-3},
        "prefill/128": {"eager": 1e-3, "iree": 2e-3}})
    assert [table.choose(*k) for k in (("decode", 1), ("decode", 3), ("prefill", 40),
                                       ("prefill", 100), ("prefill", 8))] == \
        ["onnxruntime", "openvino", "iree", "eager", "eager"]
    assert table.choose("decode", 3, allowed={"eager", "onnxruntime"}) == "onnxruntime"
    table.save(table_path(backends_dir, eager.revision, "float32"))
    auto = LLMEngine(dataclasses.replace(config(tiny_model_dir), backends="auto",
                                         backends_dir=str(backends_dir)))
    assert auto.runner.dispatch is not None
    assert set(auto.runner.dispatch.compiled) == {"eager", "onnxruntime", "openvino", "iree"}
    one = [o.new_token_ids for o in auto.generate([PROMPTS[2]], GREEDY)]  # 40 tokens: prefill/64
    used = dict(auto.runner.dispatch.used)
    assert used.get("iree") == 1 and used.get("onnxruntime") == GREEDY.max_tokens - 1, used
    assert one == [o.new_token_ids for o in eager.generate([PROMPTS[2]], GREEDY)]
    assert greedy(auto) == greedy(eager)
    assert bucket(1) == 1 and bucket(3) == 4 and bucket(64) == 64 and bucket(65) == 128


def test_backends_list_and_bad_backends_at_serve(tmp_path: Path) -> None:
    listed = subprocess.run([sys.executable, "-m", "aruntime.cli", "backends", "list", "--json"],
                            capture_output=True, text=True, timeout=120)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    bases = {"eager", "torch-compile", *COMPILED}
    assert set(rows) == bases | {f"{b}+graph" for b in bases} | {
        f"{b}@after" for b in bases - {"eager"}}
    assert all(rows[n]["available"] for n in COMPILED)
    bad = subprocess.run([sys.executable, "-m", "aruntime.cli", "serve", "--model", "demo",
                          "--backends", "tensorrt", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "tensorrt" in bad.stderr


def test_a_backend_that_fails_while_serving_falls_back_to_eager(
        tiny_model_dir: Path, backends_dir: Path, eager: LLMEngine) -> None:
    registry.BACKENDS["failing"] = FailingBackend
    try:
        engine = LLMEngine(dataclasses.replace(config(tiny_model_dir), backends="failing",
                                               backends_dir=str(backends_dir)))
        two = PROMPTS[:2]
        got = [o.new_token_ids for o in engine.generate(two, GREEDY)]
        assert got == [o.new_token_ids for o in eager.generate(two, GREEDY)]
        assert engine.runner.dispatch is not None
        assert "failing" not in engine.runner.dispatch.compiled  # eager from then on
    finally:
        del registry.BACKENDS["failing"]
