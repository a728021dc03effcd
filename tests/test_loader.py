"""Opening checkpoint directories: the happy path, every broken-directory case, the revision."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aruntime.engine.loader import (
    CheckpointError,
    check_weights,
    expected_weight_names,
    load_checkpoint,
)


@pytest.fixture()
def ckpt_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint, free to break."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "ckpt"))


def _edit_config(path: Path, **changes: object) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_loads_the_tiny_checkpoint(tiny_model_dir: Path) -> None:
    ckpt = load_checkpoint(tiny_model_dir)
    assert ckpt.path == tiny_model_dir
    assert ckpt.config.architecture == "LlamaForCausalLM"
    assert ckpt.config.vocab_size == ckpt.tokenizer.vocab_size == 2048
    assert ckpt.revision.startswith("sha256:") and len(ckpt.revision) == 7 + 64
    weights = ckpt.weights()
    assert sorted(weights) == sorted(expected_weight_names(ckpt.config))
    assert all(t.dtype == torch.float32 for t in weights.values())
    check_weights(ckpt.config, weights)


@pytest.mark.parametrize(("breakage", "message"), [
    (lambda d: shutil.rmtree(d), "does not exist"),
    (lambda d: (shutil.rmtree(d), d.write_text("x")), "is not a directory"),
    (lambda d: (d / "config.json").unlink(), "has no config.json"),
    (lambda d: (d / "config.json").write_text("{oops"), "config.json is not valid JSON"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), "must hold a JSON object"),
    (lambda d: _edit_config(d, architectures=["GPT2LMHeadModel"]),
     "unsupported architecture 'GPT2LMHeadModel'"),
    (lambda d: _edit_config(d, architectures=None), "no 'architectures' list"),
    (lambda d: _edit_config(d, hidden_size=None), "malformed field"),
    (lambda d: (d / "model.safetensors").unlink(), "has no \\*.safetensors weight files"),
    (lambda d: (d / "tokenizer.json").unlink(), "has no tokenizer.json"),
    (lambda d: (d / "tokenizer.json").write_text("{}"), "cannot load .*tokenizer.json"),
    (lambda d: (d / "tokenizer_config.json").write_text("{"), "tokenizer_config.json"),
])
def test_broken_directories(ckpt_dir: Path, breakage, message: str) -> None:
    breakage(ckpt_dir)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt_dir)


def test_missing_config_field(ckpt_dir: Path) -> None:
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    del cfg["intermediate_size"]
    (ckpt_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json is missing 'intermediate_size'"):
        load_checkpoint(ckpt_dir)


def test_corrupt_safetensors_is_named_when_read(ckpt_dir: Path) -> None:
    file = ckpt_dir / "model.safetensors"
    file.write_bytes(file.read_bytes()[:1000])  # truncated: header promises more data
    ckpt = load_checkpoint(ckpt_dir)  # weights stay on disk until asked for
    with pytest.raises(CheckpointError, match=r"cannot read weights from .*model.safetensors"):
        ckpt.weights()
    file.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"model.safetensors"):
        load_checkpoint(ckpt_dir).weights()


def test_missing_and_misshapen_weights(ckpt_dir: Path) -> None:
    ckpt = load_checkpoint(ckpt_dir)
    weights = ckpt.weights()
    del weights["model.layers.1.mlp.down_proj.weight"]
    weights["model.norm.weight"] = torch.ones(3)
    with pytest.raises(CheckpointError) as info:
        check_weights(ckpt.config, weights)
    msg = str(info.value)
    assert "missing 1 tensor(s): model.layers.1.mlp.down_proj.weight" in msg
    assert "model.norm.weight is [3], expected [64]" in msg
    weights["extra.rotary_emb.inv_freq"] = torch.ones(2)  # extras are tolerated
    del weights["model.embed_tokens.weight"]
    with pytest.raises(CheckpointError, match=r"model.embed_tokens.weight"):
        check_weights(ckpt.config, weights)


def test_many_missing_weights_are_counted(ckpt_dir: Path) -> None:
    config = load_checkpoint(ckpt_dir).config
    with pytest.raises(CheckpointError, match=r"missing 21 tensor\(s\): .*\(and 11 more\)"):
        check_weights(config, {})


def test_expected_names_follow_the_config(tiny_model_dir: Path, tiny_qwen_dir: Path) -> None:
    llama = load_checkpoint(tiny_model_dir).config
    qwen = load_checkpoint(tiny_qwen_dir).config
    assert "model.layers.0.self_attn.q_proj.bias" not in expected_weight_names(llama)
    names = expected_weight_names(qwen)
    for proj in "qkv":
        assert f"model.layers.1.self_attn.{proj}_proj.bias" in names
    assert "model.layers.1.self_attn.o_proj.bias" not in names
    assert "lm_head.weight" in names
    assert "lm_head.weight" not in expected_weight_names(replace(llama, tie_word_embeddings=True))
    check_weights(qwen, load_checkpoint(tiny_qwen_dir).weights())


def test_sharded_checkpoint(ckpt_dir: Path) -> None:
    whole = load_file(str(ckpt_dir / "model.safetensors"))
    names = sorted(whole)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, part in shards.items():
        save_file({n: whole[n] for n in part}, str(ckpt_dir / file), metadata={"format": "pt"})
    (ckpt_dir / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}
    (ckpt_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_checkpoint(ckpt_dir).weights()
    assert sorted(loaded) == names
    assert all(torch.equal(loaded[n], whole[n]) for n in names)
    (ckpt_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing: model-00002-of-00002.safetensors"):
        load_checkpoint(ckpt_dir)
    (ckpt_dir / "model.safetensors.index.json").write_text('{"no_map": 1}')
    with pytest.raises(CheckpointError, match="not a valid shard index"):
        load_checkpoint(ckpt_dir)


def test_duplicate_tensors_across_files(ckpt_dir: Path) -> None:
    shutil.copy(ckpt_dir / "model.safetensors", ckpt_dir / "model-copy.safetensors")
    with pytest.raises(CheckpointError, match="repeats tensors"):
        load_checkpoint(ckpt_dir).weights()


def test_revision_is_a_content_digest(tiny_model_dir: Path, ckpt_dir: Path) -> None:
    first = load_checkpoint(tiny_model_dir).revision
    assert load_checkpoint(tiny_model_dir).revision == first
    assert load_checkpoint(ckpt_dir).revision == first  # same content elsewhere: same revision
    (ckpt_dir / "README.md").write_text("notes do not change the model")
    assert load_checkpoint(ckpt_dir).revision == first
    weights = load_file(str(ckpt_dir / "model.safetensors"))
    weights["model.norm.weight"][0] += 1.0
    save_file(weights, str(ckpt_dir / "model.safetensors"), metadata={"format": "pt"})
    changed = load_checkpoint(ckpt_dir).revision
    assert changed != first
    _edit_config(ckpt_dir, rope_theta=500000.0)
    assert load_checkpoint(ckpt_dir).revision not in (first, changed)
