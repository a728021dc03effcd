"""Demo checkpoints: complete, deterministic, atomic, and real Hugging Face format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aruntime.engine.demo import ensure_demo_model, train_tokenizer, write_demo_model
from aruntime.engine.loader import check_weights, load_checkpoint

FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "README.md"}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aruntime.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env, check=False)


def test_tiny_writes_and_loads(tiny_model_dir: Path) -> None:
    assert {p.name for p in tiny_model_dir.iterdir()} == FILES
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["aruntime_demo"] is True and "random" in cfg["aruntime_note"].lower()
    assert cfg["model_type"] == "llama" and cfg["torch_dtype"] == "float32"
    assert "random" in (tiny_model_dir / "README.md").read_text().lower()
    ckpt = load_checkpoint(tiny_model_dir)
    check_weights(ckpt.config, ckpt.weights())
    tok = ckpt.tokenizer
    assert tok.vocab_size == ckpt.config.vocab_size == 2048
    assert [tok.encode(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        [0], [1], [2]]
    assert (tok.bos_token_id, tok.eos_token_id) == (cfg["bos_token_id"], cfg["eos_token_id"])


def test_weights_are_seeded_and_shaped_sensibly(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = write_demo_model(tmp_path / "again", size="tiny")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    other = write_demo_model(tmp_path / "other", size="tiny", seed=1)
    assert (other / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    assert load_checkpoint(other).revision != load_checkpoint(again).revision
    weights = load_checkpoint(again).weights()
    norm = weights["model.layers.0.input_layernorm.weight"]
    assert (norm - 1).abs().max() < 0.3
    assert 0.5 < weights["model.embed_tokens.weight"].std() < 2


def test_tokenizer_training_is_deterministic_across_processes() -> None:
    code = ("import hashlib; from aruntime.engine.demo import train_tokenizer; "
            "print(hashlib.sha256(train_tokenizer(2048).encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    import hashlib

    assert out == hashlib.sha256(train_tokenizer(2048).encode()).hexdigest()


def test_write_refuses_foreign_directories(tiny_model_dir: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a demo checkpoint"):
        write_demo_model(foreign, size="tiny")
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    with pytest.raises(NotADirectoryError):
        write_demo_model(foreign / "keep.txt", size="tiny")
    with pytest.raises(ValueError, match="unknown demo size"):
        write_demo_model(tmp_path / "x", size="huge")
    with pytest.raises(ValueError, match="unsupported architecture"):
        write_demo_model(tmp_path / "x", size="tiny", architecture="GPT2LMHeadModel")
    assert {p.name for p in tmp_path.iterdir()} == {"foreign"}  # no temp dirs left behind


def test_rewrite_replaces_a_demo_checkpoint(tmp_path: Path) -> None:
    target = write_demo_model(tmp_path / "m", size="tiny")
    write_demo_model(target, size="tiny", architecture="Qwen2ForCausalLM", seed=3)
    assert load_checkpoint(target).config.architecture == "Qwen2ForCausalLM"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_ensure_demo_model_races(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes create the shared copy at once: both get a complete checkpoint."""
    env = {**os.environ, "ARUNTIME_HOME": str(tmp_path)}
    code = "from aruntime.engine.demo import ensure_demo_model; print(ensure_demo_model('tiny'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    target = tmp_path / "models" / "demo-tiny"
    assert outs == [str(target)] * 2
    assert [p.name for p in target.parent.iterdir()] == ["demo-tiny"]
    monkeypatch.setenv("ARUNTIME_HOME", str(tmp_path))
    before = (target / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_model("tiny") == target
    assert (target / "model.safetensors").stat().st_mtime_ns == before  # not rewritten
    check_weights(load_checkpoint(target).config, load_checkpoint(target).weights())


def test_cli_writes_a_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "cli-model"
    done = _cli("demo-model", str(target), "--size", "tiny", "--architecture",
                "MistralForCausalLM", "--seed", "7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target)
    assert load_checkpoint(target).config.architecture == "MistralForCausalLM"


def test_cli_bad_usage(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    done = _cli("demo-model", str(tmp_path), "--size", "tiny")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a demo checkpoint" in lines[0]
    done = _cli("demo-model", str(tmp_path / "x"), "--size", "huge")
    assert done.returncode == 2 and "invalid choice" in done.stderr


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen2ForCausalLM",
                                          "MistralForCausalLM"])
def test_transformers_loads_the_checkpoint(architecture: str, request: pytest.FixtureRequest,
                                           tmp_path: Path) -> None:
    """The files are real HF format: every tensor is consumed, transformers tokenizes as we
    do, and the logits are usable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if architecture == "LlamaForCausalLM":
        path: Path = request.getfixturevalue("tiny_model_dir")
    elif architecture == "Qwen2ForCausalLM":
        path = request.getfixturevalue("tiny_qwen_dir")
    else:
        path = write_demo_model(tmp_path / "mistral", size="tiny", architecture=architecture)
    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert type(model).__name__ == architecture
    assert model.config.rms_norm_eps == 1e-5
    ours = load_checkpoint(path).tokenizer
    hf_tok = AutoTokenizer.from_pretrained(path)
    text = "The demo model says 你好 🚀 and counts 1 2 3."
    assert hf_tok.encode(text) == ours.encode(text)
    messages = [{"role": "user", "content": "hi"}]
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        ours.apply_chat_template(messages)
    ids = torch.tensor([ours.encode(text * 4)])
    with torch.no_grad():
        logits = model(ids).logits[0]
    assert torch.isfinite(logits).all()
    top2 = logits.topk(2, dim=-1).values
    margins = top2[:, 0] - top2[:, 1]
    # Greedy decoding must not hinge on rounding: near-ties between the top two are rare.
    assert (margins > 0.05).float().mean() > 0.8
    assert 2 < logits.std() < 8


def test_losing_writer_keeps_the_winners_copy(tmp_path: Path) -> None:
    """What the loser of an ensure_demo_model race does: its rename fails, it discards its copy."""
    from aruntime.engine import demo

    target = write_demo_model(tmp_path / "shared", size="tiny", seed=5)
    before = load_checkpoint(target).revision
    assert demo._write(target, "tiny", "LlamaForCausalLM", 0, replace=False) == target
    assert load_checkpoint(target).revision == before
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]
