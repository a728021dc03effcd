"""An incremental reader of a model's tool calls over its text deltas.

A call is `<open> {"name": "<tool>", "<key>": {...}} <tail>`, where the opening and the tail
belong to the format (serve/tool_parsers.py: Hermes' `<tool_call>` tags, Llama 3.1's bare JSON
joined by `;`). The reader holds back text that may still become a call, emits a call's id and
name once its header has parsed, then its arguments as they arrive, and everything outside
calls as content. A call's arguments are the model's own JSON text of the value, so the streamed
pieces join to exactly what the one-shot parse returns: that parse is this reader fed the whole
text at once. Text that looks like a call but whose header does not parse stays content.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

_WS = " \t\r\n"
# Scan results: a match, a definite mismatch, or "cannot tell before more text arrives".
NEED, FAIL = -1, -2


def skip_ws(buf: str, i: int) -> int:
    while i < len(buf) and buf[i] in _WS:
        i += 1
    return i


def literal(buf: str, i: int, lit: str) -> int:
    """The index after `lit` at `i`, or NEED (the text ends inside it), or FAIL."""
    got = buf[i:i + len(lit)]
    if got == lit:
        return i + len(lit)
    return NEED if lit.startswith(got) else FAIL


def held_prefix(buf: str, start: int, tag: str) -> int:
    """How many trailing characters of `buf[start:]` may be the beginning of `tag`."""
    for k in range(min(len(tag) - 1, len(buf) - start), 0, -1):
        if tag.startswith(buf[len(buf) - k:]):
            return k
    return 0


def _string(buf: str, i: int) -> tuple[int, str]:
    """A JSON string at `i`: its end and value, or (NEED | FAIL, "")."""
    if i >= len(buf):
        return NEED, ""
    if buf[i] != '"':
        return FAIL, ""
    j = i + 1
    while j < len(buf):
        if buf[j] == "\\":
            j += 2
        elif buf[j] == '"':
            try:
                return j + 1, json.loads(buf[i:j + 1])
            except json.JSONDecodeError:
                return FAIL, ""
        else:
            j += 1
    return NEED, ""


def header(buf: str, i: int, keys: tuple[str, ...]) -> tuple[int, str]:
    """`{"name": "<name>", "<key>": ` up to the `{` that opens the arguments: that index and
    the name, or (NEED | FAIL, "")."""
    name = ""
    for step in ("{", '"name"', ":", "name", ",", "key", ":"):
        i = skip_ws(buf, i)
        if step == "name":
            i, name = _string(buf, i)
        elif step == "key":  # a match, else NEED while some key may still come, else FAIL
            i = max(literal(buf, i, f'"{k}"') for k in keys)
        else:
            i = literal(buf, i, step)
        if i < 0:
            return i, ""
    i = skip_ws(buf, i)  # the arguments' brace is not consumed: it is their first character
    if i >= len(buf):
        return NEED, ""
    return (i, name) if buf[i] == "{" else (FAIL, "")


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class CallDelta:
    """A piece of call `index`: its first carries the id and name, the rest argument text."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None

    def as_openai(self) -> dict[str, Any]:
        if self.id is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


Delta = str | CallDelta  # a str is content


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    content: str | None  # the text outside calls, stripped; None when empty
    calls: list[ToolCall]


class CallSyntax(ABC):
    """Where a format's calls open and how one ends; the reader does the rest."""

    arguments_keys: tuple[str, ...] = ("arguments",)

    @abstractmethod
    def open(self, buf: str, pos: int, at_start: bool, final: bool) -> tuple[str, int, int]:
        """From `pos` (`at_start`: nothing read yet): ("open", content_end, body_start) when a
        call opens; ("hold", release_end, 0) when text up to release_end is content and the
        rest may be an opening; ("text", 0, 0) when all that follows is content."""

    @abstractmethod
    def tail(self, buf: str, pos: int, final: bool) -> tuple[str, int, int]:
        """After a call's closing brace at `pos`: ("need", 0, 0) to wait for text;
        ("outside", end, 0) when the call has ended and plain text resumes at end;
        ("next", mark, body) when another call's header follows at body (mark..body is its
        separator, content should that call fail); ("text", end, 0): content from end on."""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class _Content:
    """Content deltas, stripped on both ends as a whole (trailing blanks wait for more text)."""

    started: bool = False
    held: str = ""
    parts: list[str] = field(default_factory=list)

    def add(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        body = (self.held + text).rstrip()
        self.held = (self.held + text)[len(body):]
        if body:
            self.parts.append(body)
        return body


class ToolCallStream:
    """One choice's text, read as it comes. `push` returns the deltas it completes; `finish`
    ends the text; `result` is the whole answer."""

    def __init__(self, syntax: CallSyntax, names: Collection[str]) -> None:
        self._syntax, self._names = syntax, set(names)
        self._buf, self._pos, self._state = "", 0, "outside"
        self._mark = 0  # where the call being read began (its content, should it fail)
        self._opened = False  # a call has opened (at_start is over)
        self._depth, self._in_str, self._esc = 0, False, False
        self._content = _Content()
        self._calls: list[tuple[str, str, list[str]]] = []

    def push(self, text: str) -> list[Delta]:
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[Delta]:
        return self._run(final=True)

    def result(self) -> ParsedOutput:
        return ParsedOutput("".join(self._content.parts) or None,
                            [ToolCall(i, n, "".join(a)) for i, n, a in self._calls])

    def _run(self, final: bool) -> list[Delta]:
        out: list[Delta] = []
        step = {"outside": self._outside, "header": self._header, "args": self._args,
                "after": self._after, "text": self._text}
        while step[self._state](out, final):
            pass
        return out

    def _emit(self, out: list[Delta], end: int) -> None:
        if end > self._pos and (piece := self._content.add(self._buf[self._pos:end])):
            out.append(piece)
        self._pos = max(self._pos, end)

    def _text(self, out: list[Delta], final: bool) -> bool:
        self._emit(out, len(self._buf))
        return False

    def _outside(self, out: list[Delta], final: bool) -> bool:
        kind, a, b = self._syntax.open(self._buf, self._pos, not self._opened, final)
        if kind == "text":
            self._state = "text"
            return True
        self._emit(out, a)
        if kind == "hold":
            return False
        self._mark, self._pos, self._state, self._opened = a, b, "header", True
        return True

    def _header(self, out: list[Delta], final: bool) -> bool:
        end, name = header(self._buf, self._pos, self._syntax.arguments_keys)
        if end == NEED and not final:
            return False
        if end < 0 or name not in self._names:  # not a call after all: its opening is content
            body, self._pos = self._pos, self._mark
            self._emit(out, len(self._buf) if end == NEED else body)
            self._state = "outside"
            return end != NEED
        call_id = new_call_id()
        self._calls.append((call_id, name, []))
        out.append(CallDelta(len(self._calls) - 1, "", call_id, name))
        self._pos, self._state = end, "args"
        self._depth, self._in_str, self._esc = 0, False, False
        return True

    def _args(self, out: list[Delta], final: bool) -> bool:
        buf, j, done = self._buf, self._pos, False
        while j < len(buf) and not done:
            ch = buf[j]
            if self._in_str:
                self._esc, self._in_str = (False, True) if self._esc else (
                    ch == "\\", ch != '"')
            elif ch == '"':
                self._in_str = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                done = self._depth == 0
            j += 1
        if j > self._pos:
            piece = buf[self._pos:j]
            self._calls[-1][2].append(piece)
            out.append(CallDelta(len(self._calls) - 1, piece))
            self._pos = j
        if done:
            self._state = "after"
        return done

    def _after(self, out: list[Delta], final: bool) -> bool:
        i = skip_ws(self._buf, self._pos)
        end = literal(self._buf, i, "}")
        if end == NEED:
            return False
        if end == FAIL:  # the call's object does not close: what follows is content
            self._state = "outside"
            return True
        kind, a, b = self._syntax.tail(self._buf, end, final)
        if kind == "need":
            return False
        self._pos = a
        if kind == "next":
            self._mark, self._pos, self._state = a, b, "header"
        else:
            self._state = kind
        return True
