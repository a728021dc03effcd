"""Constrained decoding: a `GuidedDecoding` becomes a grammar (llguidance's, chosen by `aruntime
bench grammar`: its per-token masks and compiles are the cheaper ones here, and it names the
schema keywords it cannot enforce), compiled once per distinct spec; each guided sequence gets a
matcher whose next-token bitmask is applied to its logits row before sampling.

JSON is generated in `json.dumps`'s default layout (`", "` and `": "`, no other whitespace): free
whitespace lets a model pad forever, and the grammar stays finite where the schema bounds it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import llguidance
import torch

from aruntime.engine.sampling import GuidedDecoding
from aruntime.engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ",
                     "key_separator": ": "}
_UNIMPLEMENTED = re.compile(r'Unimplemented keys: \[(.*)\]')
_BITS = torch.arange(32, dtype=torch.int32)


class GuidedDecodingError(ValueError):
    """A constraint that is malformed or uses a feature the grammar engine cannot enforce; the
    message names it (`json_schema: unsupported keyword 'not'`)."""


def _explain(message: str) -> str:
    """llguidance's error, said as what the request used that is not supported."""
    found = _UNIMPLEMENTED.search(message)
    if found:
        keys = [k.strip().strip('"') for k in found[1].split(",")]
        plural = "s" if len(keys) > 1 else ""
        return f"unsupported keyword{plural} " + ", ".join(f"'{k}'" for k in keys)
    if message.startswith("Unknown format: "):
        return f"unsupported format '{message.removeprefix('Unknown format: ')}'"
    return message


def _schema_json(spec: GuidedDecoding) -> str:
    if spec.kind == "json_object":
        return '{"type": "object"}'
    try:
        schema = json.loads(spec.schema)
    except json.JSONDecodeError as exc:
        raise GuidedDecodingError(f"{spec.kind}: the schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict | bool):
        raise GuidedDecodingError(f"{spec.kind}: the schema must be a JSON object")
    return json.dumps(schema, ensure_ascii=False)


def _literal(text: str, specials: Mapping[str, int]) -> str:
    """A Lark literal for `text`; special tokens in it are matched as those tokens (`<[id]>`),
    since a model emits them as one token, never as their characters."""
    if not text:
        return ""
    for content, token_id in specials.items():
        i = text.find(content)
        if i >= 0:
            return " ".join(p for p in (_literal(text[:i], specials), f"<[{token_id}]>",
                                        _literal(text[i + len(content):], specials)) if p)
    return json.dumps(text, ensure_ascii=False)


def grammar_of(spec: GuidedDecoding, specials: Mapping[str, int] | None = None) -> str:
    """llguidance's grammar text for a spec. `tool_calls`: `begin`, the JSON, `end`, once or,
    with `repeat`, one or more times, optionally a newline between calls."""
    schema = _schema_json(spec)
    if spec.kind != "tool_calls":
        return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    body = json.loads(schema) if schema not in ("true", "false") else {}
    if isinstance(body, dict):
        body = {**body, "x-guidance": {**JSON_OPTIONS, **body.get("x-guidance", {})}}
    parts = [_literal(spec.begin, specials or {}), "body", _literal(spec.end, specials or {})]
    start = 'call ("\\n"? call)*' if spec.repeat else "call"
    lark = (f"start: {start}\ncall: {' '.join(p for p in parts if p)}\n"
            f"body: %json {json.dumps(body, ensure_ascii=False)}\n")
    return llguidance.LLMatcher.grammar_from_lark(lark)


@functools.lru_cache(maxsize=256)
def _check(spec: GuidedDecoding) -> str:
    try:
        grammar = grammar_of(spec)
    except GuidedDecodingError as exc:
        return str(exc)
    except ValueError as exc:  # llguidance's own parse errors
        return f"{spec.kind}: {exc}"
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return f"{spec.kind}: {_explain(messages[0])}" if is_error else ""


def check_guided(spec: GuidedDecoding) -> None:
    """Raise GuidedDecodingError if the engine could not enforce `spec`. Needs no tokenizer, so
    the API server calls it before a request reaches an engine; results are cached by spec."""
    error = _check(spec)
    if error:
        raise GuidedDecodingError(error)


class GuidedMatcher:
    """One sequence's place in its grammar. Advanced by every token the sequence accepts; a
    preempted sequence keeps it, since recomputing its tokens samples none of them again."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher

    def accept(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            logger.warning("guided decoding: token %d rejected: %s", token_id,
                           self.matcher.get_error())

    @property
    def done(self) -> bool:
        """The grammar is complete (nothing may follow) or broken: the sequence ends here."""
        return self.matcher.is_stopped() or self.matcher.is_error()


class GuidedDecoder:
    """One engine's grammars: its tokenizer as llguidance sees it (built on first use, ~1 s for
    a 50k vocabulary), compiled specs (LRU), and the batch masking."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_ids: frozenset[int],
                 capacity: int = 64) -> None:
        self._tokenizer = tokenizer
        # The embedding may have rows past the tokenizer's ids: they have no text, never allowed.
        self.vocab_size = vocab_size
        self._eos = sorted(eos_ids)
        self._capacity = capacity
        self._compiled: OrderedDict[GuidedDecoding, llguidance.LLMatcher] = OrderedDict()
        self._ll: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        backend = tokenizer.backend
        self._specials = {t.content: i for i, t in backend.get_added_tokens_decoder().items()
                          if t.special}

    def _lltokenizer(self) -> llguidance.LLTokenizer:
        if self._ll is None:
            n_vocab = max(self.vocab_size, self._tokenizer.backend.get_vocab_size(True))
            self._ll = llguidance.LLTokenizer(self._tokenizer.backend.to_str(), n_vocab=n_vocab,
                                              eos_token=self._eos or None)
            self._executor = llguidance.LLExecutor(num_threads=2)
        return self._ll

    def matcher(self, spec: GuidedDecoding) -> GuidedMatcher:
        """A fresh matcher for one sequence; the spec is compiled the first time it is seen."""
        compiled = self._compiled.get(spec)
        if compiled is None:
            compiled = llguidance.LLMatcher(self._lltokenizer(),
                                            grammar_of(spec, self._specials))
            if compiled.is_error():
                raise GuidedDecodingError(f"{spec.kind}: {_explain(compiled.get_error())}")
            self._compiled[spec] = compiled
            if len(self._compiled) > self._capacity:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(spec)
        return GuidedMatcher(compiled.deep_copy())

    def mask(self, logits: torch.Tensor, matchers: list[GuidedMatcher | None]) -> torch.Tensor:
        """`logits` with each guided row's disallowed tokens at -inf (a new tensor; rows
        without a matcher are as they were). Masks are filled in parallel, applied at once."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return logits
        self._lltokenizer()
        assert self._executor is not None
        words = (self._lltokenizer().vocab_size + 31) // 32
        bitmask = torch.zeros((len(rows), words), dtype=torch.int32)
        pairs = [(m.matcher, j) for j, i in enumerate(rows)
                 if (m := matchers[i]) is not None]
        self._executor.unsafe_compute_mask_ptr(pairs, bitmask.data_ptr(), words * 4, len(rows))
        allowed = ((bitmask.unsqueeze(-1) >> _BITS) & 1).view(len(rows), -1).bool()
        width = logits.shape[1]
        if allowed.shape[1] < width:
            allowed = torch.nn.functional.pad(allowed, (0, width - allowed.shape[1]))
        idx = torch.tensor(rows, device=logits.device)
        out = logits.clone()
        out[idx] = logits[idx].masked_fill(~allowed[:, :width].to(logits.device),
                                           float("-inf"))
        return out
