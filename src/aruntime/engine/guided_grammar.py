"""A `GuidedDecoding` as a grammar of llguidance (the grammar engine `aruntime bench grammar`
chose: its per-token masks and compiles are the cheaper ones here, and it names the schema
keywords it cannot enforce), and the check the API server runs before a request reaches an
engine. No torch here: the server process does not load it. engine/guided.py enforces them.

JSON is generated in `json.dumps`'s default layout (`", "` and `": "`, no other whitespace): free
whitespace lets a model pad forever, and the grammar stays finite where the schema bounds it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import llguidance

from aruntime.engine.sampling import GuidedDecoding

JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ",
                     "key_separator": ": "}
_UNIMPLEMENTED = re.compile(r'Unimplemented keys: \[(.*)\]')


class GuidedDecodingError(ValueError):
    """A constraint that is malformed or uses a feature the grammar engine cannot enforce; the
    message names it (`json_schema: unsupported keyword 'not'`)."""


def explain(message: str) -> str:
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
    return f"{spec.kind}: {explain(messages[0])}" if is_error else ""


def check_guided(spec: GuidedDecoding) -> None:
    """Raise GuidedDecodingError if the engine could not enforce `spec`. Needs no tokenizer, so
    the API server calls it before a request reaches an engine; results are cached by spec."""
    error = _check(spec)
    if error:
        raise GuidedDecodingError(error)
