"""A checkpoint's tokenizer: `tokenizer.json` through the `tokenizers` library, the chat template
from `tokenizer_config.json` (or `chat_template.jinja`); a GGUF file's is rebuilt from its
metadata (engine/gguf_tokenizer.py). And a streaming detokenizer."""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import tokenizers
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from aruntime.jsonfile import read_json_object

REPLACEMENT_CHAR = "\ufffd"
# Already-emitted tokens decoded again as left context: decoders with leading-space rules
# (SentencePiece's Metaspace) render a token differently at the start of a window.
_CONTEXT_TOKENS = 5
_MAX_SPLIT_TOKENS = 3  # an unfinished UTF-8 character has at most 3 bytes, so spans <= 3 tokens
_MAX_WINDOW = 2 * _CONTEXT_TOKENS + _MAX_SPLIT_TOKENS  # a longer window (tokens) slides up


class TokenizerError(ValueError):
    """A tokenizer directory is missing files or holds malformed ones."""


class ChatTemplateError(ValueError):
    """There is no chat template, it does not compile, or rendering it failed."""


class _GenerationTag(Extension):
    """HF templates may mark assistant text with `{% generation %}`; we only need its body."""

    tags = {"generation"}  # noqa: RUF012 - jinja2 reads this class attribute as a set

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        body: list[nodes.Node] = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return body


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # HF's filter keeps non-ASCII text as is; jinja's built-in one escapes it for HTML.
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _template_env() -> ImmutableSandboxedEnvironment:
    # The same settings transformers uses, so templates render the same text here and there.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json spells a special token as a string or as a serialized AddedToken."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _as_ids(ids: Sequence[int], limit: int | None) -> list[int]:
    """Plain ints (numpy and torch integer scalars accepted), checked to lie in [0, limit)."""
    try:
        out = [operator.index(i) for i in ids]
    except TypeError:
        raise ValueError("token ids must be a sequence of integers") from None
    bad = [i for i in out if i < 0 or (limit is not None and i >= limit)]
    if bad:
        bound = "" if limit is None else f", below {limit}"
        raise ValueError(f"token ids must be non-negative{bound}; got {bad[:5]}")
    return out


def _pick_template(raw: Any) -> str | None:
    # Some configs hold a list of named templates; the unnamed chat uses "default".
    if isinstance(raw, list):
        named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
        raw = named.get("default")
    return raw if isinstance(raw, str) else None


class Tokenizer:
    """Text <-> token ids for one checkpoint, plus its chat template."""

    def __init__(self, backend: tokenizers.Tokenizer, *, chat_template: str | None = None,
                 special_tokens: dict[str, str] | None = None,
                 add_bos_token: bool = False) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})  # "bos_token" -> "<s>", ...
        self.add_bos_token = add_bos_token
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.bos_token_id = self._id_of(self.bos_token)
        self.eos_token_id = self._id_of(self.eos_token)
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        # Added tokens may sit past a gap in the ids; the largest known id bounds valid input.
        self._id_limit = max([self.vocab_size - 1, *backend.get_added_tokens_decoder()]) + 1
        self._compiled: jinja2.Template | None = None

    @classmethod
    def from_path(cls, path: str | Path) -> Tokenizer:
        """A checkpoint directory's tokenizer, or the one a GGUF file's metadata describes."""
        path = Path(path)
        if not path.is_file():
            return cls.from_dir(path)
        from aruntime.engine.gguf_checkpoint import open_reader
        from aruntime.engine.gguf_tokenizer import gguf_tokenizer
        from aruntime.engine.loader import CheckpointError

        try:
            return gguf_tokenizer(open_reader(path))
        except CheckpointError as exc:
            raise TokenizerError(str(exc)) from None

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise TokenizerError(f"{path} has no tokenizer.json")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # the Rust side raises bare Exception on bad JSON
            raise TokenizerError(f"cannot load {tok_file}: {exc}") from None
        cfg_file = path / "tokenizer_config.json"
        cfg = read_json_object(cfg_file, TokenizerError) if cfg_file.is_file() else {}
        jinja_file = path / "chat_template.jinja"
        # transformers writes the template to its own file and prefers it when both exist.
        try:
            template = (jinja_file.read_text(encoding="utf-8") if jinja_file.is_file()
                        else _pick_template(cfg.get("chat_template")))
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"cannot read {jinja_file}: {exc}") from None
        specials = {key: tok for key in ("bos_token", "eos_token", "unk_token", "pad_token")
                    if (tok := _token_content(cfg.get(key))) is not None}
        return cls(backend, chat_template=template, special_tokens=specials,
                   add_bos_token=bool(cfg.get("add_bos_token", False)))

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        # encode_batch releases the GIL (encode holds it: seconds, for a long text, in which no
        # other thread of the process runs, an API server's event loop included)
        [encoding] = self.backend.encode_batch([text], add_special_tokens=add_special_tokens)
        ids: list[int] = encoding.ids
        # Configs that ask for BOS without a post-processor that adds it (the post-processor
        # may already have added it: then it is not added twice).
        if (add_special_tokens and self.add_bos_token and self.bos_token_id is not None
                and (not ids or ids[0] != self.bos_token_id)):
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        # `tokenizers` silently drops unknown ids; a caller's bad ids get an error instead.
        return self.backend.decode(_as_ids(ids, self._id_limit),
                                   skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def apply_chat_template(self, messages: list[dict[str, Any]],
                            add_generation_prompt: bool = True, **template_vars: Any) -> str:
        """Render a conversation; extra keyword arguments (tools, ...) reach the template."""
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise ChatTemplateError("messages must be a list of dicts with a string 'role'")
        template = self._template()
        variables = {**self.special_tokens, **template_vars, "messages": messages,
                     "add_generation_prompt": add_generation_prompt}
        try:
            return template.render(variables)
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError,
                IndexError) as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from None

    def _template(self) -> jinja2.Template:
        if self._compiled is None:
            if not self.chat_template:
                raise ChatTemplateError("this tokenizer has no chat template")
            try:
                self._compiled = _template_env().from_string(self.chat_template)
            except jinja2.TemplateError as exc:
                raise ChatTemplateError(f"chat template does not compile: {exc}") from None
        return self._compiled


class IncrementalDetokenizer:
    """Turns generated token ids into text deltas as they arrive.

    Each push decodes only a short window of ids, from `_prefix` (a few already-emitted tokens
    kept as context for decoders whose output depends on neighbours) to the end, and emits what
    lies past the `_emitted` characters already sent. A trailing U+FFFD may be a UTF-8
    character split across tokens: it is held back until later tokens settle it. Joined, the
    deltas equal `decode(generated ids)` once `finish()` has flushed what is held back.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int] | None = None,
                 skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = _as_ids(prompt_token_ids or (), None)
        # Decoding starts in the prompt's tail so the first delta sees its left context.
        self._prefix = max(len(self._ids) - _CONTEXT_TOKENS, 0)
        window = self._decode(self._prefix)
        # A character split between prompt and output is emitted with the output.
        self._emitted = len(window) - window.endswith(REPLACEMENT_CHAR)
        self._parts: list[str] = []

    def _decode(self, start: int) -> str:
        return self.tokenizer.backend.decode(
            self._ids[start:], skip_special_tokens=self.skip_special_tokens)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add newly generated tokens; return the text they complete (may be empty).

        Ids past the tokenizer's vocabulary decode to nothing rather than raise: a model's
        embedding is often padded beyond its tokenizer, and the sampler may pick such a row."""
        self._ids.extend(_as_ids(token_ids, None))
        window = self._decode(self._prefix)
        # Appending bytes can only change the last U+FFFD (an unfinished character); earlier
        # ones stand for invalid bytes and are final.
        held = window.endswith(REPLACEMENT_CHAR)
        end = len(window) - held
        delta = window[self._emitted:end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        if len(self._ids) - self._prefix > _MAX_WINDOW:
            self._slide(held)
        if delta:
            self._parts.append(delta)
        return delta

    def _slide(self, held: bool) -> None:
        """Move the window's start up. Any start works for byte-level text: one inside a
        character decodes to the same leading U+FFFD each time, so counts stay consistent."""
        # An unfinished character has at most 3 bytes, so it lies within the last 3 tokens.
        start = len(self._ids) - _CONTEXT_TOKENS - (_MAX_SPLIT_TOKENS if held else 0)
        window = self._decode(start)
        if held and not window.endswith(REPLACEMENT_CHAR):
            return  # not byte-level after all: keep the longer window rather than guess
        self._prefix, self._emitted = start, len(window) - held

    def finish(self) -> str:
        """Flush text held back at the end of generation: an unfinished character shows as
        U+FFFD, exactly as a full decode would show it."""
        window = self._decode(self._prefix)
        delta = window[self._emitted:]
        self._emitted = max(self._emitted, len(window))
        if delta:
            self._parts.append(delta)
        return delta

    @property
    def text(self) -> str:
        """All text emitted so far (not counting text held back)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def token_ids(self) -> list[int]:
        """Prompt and generated ids seen so far."""
        return list(self._ids)
