"""The checkpoint tokenizer: round trips, special tokens, chat templates, streaming decode."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from aruntime.engine.tokenizer import (
    ChatTemplateError,
    IncrementalDetokenizer,
    Tokenizer,
    TokenizerError,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Emoji: 👋🏽 🚀 👨‍👩‍👧 and flags 🇯🇵!",
    "中文字符：你好，世界。日本語のテキスト、한국어 텍스트.",  # noqa: RUF001 - full-width CJK punctuation is the test data
    "Mixed\ttabs\n\nnewlines  double  spaces, café naïve Ω ≈ ∑ e\u0301 \u200b end",
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_model_dir)


@pytest.fixture()
def tok_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint's tokenizer files, free to edit."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, tmp_path / name)
    return tmp_path


def _edit_config(path: Path, **changes: object) -> None:
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg.update(changes)
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert ids and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_special_tokens(tok: Tokenizer) -> None:
    assert tok.vocab_size == 2048
    assert (tok.bos_token_id, tok.eos_token_id) == (0, 2)
    assert tok.encode("hi") == tok.encode("hi", add_special_tokens=False)  # ChatML: no BOS
    ids = tok.encode("<|im_start|>user")
    assert ids[0] == 1 and len(ids) > 1
    assert tok.decode(ids) == "user"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user"


def test_bad_ids_are_refused(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="below 2048"):
        tok.decode([5, 2048])
    with pytest.raises(ValueError, match="non-negative"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="integers"):
        tok.decode(["a"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_add_bos_token(tok_dir: Path) -> None:
    _edit_config(tok_dir, add_bos_token=True)
    tok = Tokenizer.from_dir(tok_dir)
    assert tok.encode("hi")[0] == 0
    assert tok.encode("<|endoftext|>hi").count(0) == 1  # not doubled
    assert tok.encode("hi", add_special_tokens=False)[0] != 0


def test_chat_template(tok: Tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi 😀"}]
    expected = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi 😀<|im_end|>\n")
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == expected
    assert tok.apply_chat_template(messages) == expected + "<|im_start|>assistant\n"
    ids = tok.encode(tok.apply_chat_template(messages))
    assert ids.count(1) == 3 and ids.count(2) == 2  # control tokens are single ids


def test_chat_template_errors(tok: Tokenizer, tok_dir: Path) -> None:
    with pytest.raises(ChatTemplateError, match="role"):
        tok.apply_chat_template([{"content": "no role"}])
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        tok.apply_chat_template([{"role": "user", "content": ["a", "list"]}])
    _edit_config(tok_dir, chat_template=None)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        Tokenizer.from_dir(tok_dir).apply_chat_template([{"role": "user", "content": "x"}])
    _edit_config(tok_dir, chat_template="{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="does not compile"):
        Tokenizer.from_dir(tok_dir).apply_chat_template([{"role": "user", "content": "x"}])
    _edit_config(tok_dir, chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        Tokenizer.from_dir(tok_dir).apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_file_and_hf_features(tok_dir: Path) -> None:
    (tok_dir / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}\n"
        "  {% generation %}{{ m | tojson }}{% endgeneration %}\n"
        "{% endfor %}{{ tools | length }}")
    tok = Tokenizer.from_dir(tok_dir)  # the .jinja file wins over tokenizer_config.json
    out = tok.apply_chat_template([{"role": "user", "content": "é"}], tools=[{"a": 1}])
    assert out == '<|endoftext|>{"role": "user", "content": "é"}1'


def test_sandbox_blocks_unsafe_templates(tok_dir: Path) -> None:
    _edit_config(tok_dir, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        Tokenizer.from_dir(tok_dir).apply_chat_template([{"role": "user", "content": "x"}])


def test_from_dir_errors(tok_dir: Path) -> None:
    (tok_dir / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json"):
        Tokenizer.from_dir(tok_dir)
    (tok_dir / "tokenizer.json").write_text("{}")
    with pytest.raises(TokenizerError, match="cannot load"):
        Tokenizer.from_dir(tok_dir)
    (tok_dir / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match=r"no tokenizer.json"):
        Tokenizer.from_dir(tok_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_detokenizer_one_token_at_a_time(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push([i]) for i in ids]
    assert "".join(deltas) == text == detok.text
    assert not any("\ufffd" in d for d in deltas)  # split characters were held back
    assert detok.finish() == ""


def test_detokenizer_chunks_prompt_and_specials(tok: Tokenizer) -> None:
    rng = random.Random(0)
    text = "".join(TEXTS)
    prompt = tok.encode("<|im_start|>user\nSay 你好<|im_end|>\n")
    ids = [*tok.encode(text), 2, *tok.encode("🚀 after")]
    detok = IncrementalDetokenizer(tok, prompt_token_ids=prompt)
    out, i = [], 0
    while i < len(ids):
        n = rng.randint(1, 4)
        out.append(detok.push(ids[i:i + n]))
        i += n
        # The decoded window stays short however long the sequence grows.
        assert len(detok.token_ids) - detok._prefix <= 13
    assert "".join(out) == tok.decode(ids) == text + "🚀 after"


def test_detokenizer_unfinished_character_is_flushed(tok: Tokenizer) -> None:
    ids = tok.encode("ok 🚀")
    cut = next(n for n in range(len(ids), 0, -1) if tok.decode(ids[:n]).endswith("\ufffd"))
    detok = IncrementalDetokenizer(tok)
    streamed = "".join(detok.push([i]) for i in ids[:cut])
    assert streamed == "ok "
    assert streamed + detok.finish() == tok.decode(ids[:cut])


def test_detokenizer_ids(tok: Tokenizer) -> None:
    import torch

    detok = IncrementalDetokenizer(tok)
    assert detok.push(torch.tensor(tok.encode("abc")).tolist()) == "abc"
    assert detok.push([torch.tensor(5)]) == tok.decode([5])  # integer scalars are accepted
    assert detok.push([4096]) == ""  # past the tokenizer (a padded embedding row): no text
    with pytest.raises(ValueError, match="non-negative"):
        detok.push([-3])


def test_detokenizer_random_ids_and_chunks(tok: Tokenizer) -> None:
    """Random ids make invalid and split UTF-8 everywhere; the deltas must still add up."""
    rng = random.Random(1)
    prompt = tok.encode("Prompt: 你好")
    for trial in range(200):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 60))]
        skip = trial % 3 != 0
        detok = IncrementalDetokenizer(tok, prompt_token_ids=prompt if trial % 2 else None,
                                       skip_special_tokens=skip)
        out, i = [], 0
        while i < len(ids):
            n = rng.choice((1, 1, 1, 2, 3, 7))
            out.append(detok.push(ids[i:i + n]))
            i += n
            assert len(detok.token_ids) - detok._prefix <= 13
        out.append(detok.finish())
        assert "".join(out) == tok.decode(ids, skip_special_tokens=skip) == detok.text
