"""The tool-call formats of model families, by name: how a call is spelled (for prompts whose
template cannot show tools), where it opens and ends (for the reader, serve/tool_stream.py), and
the constraint that makes a required call always parse (for the grammar engine).

- `hermes`: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per
  call, text around them is content (Hermes 2 Pro, Qwen2.5, SmolLM2).
- `llama3_json`: Llama 3.1's JSON calls, `<|python_tag|>` optional, then
  `{"name": ..., "parameters": {...}}`, several joined by `;`; only an answer that begins with
  one holds calls.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from aruntime.engine.sampling import GuidedDecoding
from aruntime.serve.tool_specs import Tool, ToolPlan
from aruntime.serve.tool_stream import (
    FAIL,
    NEED,
    CallSyntax,
    ParsedOutput,
    ToolCallStream,
    held_prefix,
    literal,
    skip_ws,
)


class ToolParser(CallSyntax):
    name: ClassVar[str]
    call_begin: ClassVar[str]  # what a constrained call starts and ends with
    call_end: ClassVar[str]

    def stream(self, names: Collection[str]) -> ToolCallStream:
        """A reader for one choice; calls must name one of `names`."""
        return ToolCallStream(self, names)

    def parse(self, text: str, names: Collection[str]) -> ParsedOutput:
        reader = self.stream(names)
        reader.push(text)
        reader.finish()
        return reader.result()

    def guided(self, plan: ToolPlan) -> GuidedDecoding:
        """One call (or, as `plan.repeat` says, one or more) that names an allowed tool and
        whose arguments validate against its parameters."""
        key = self.arguments_keys[0]
        options = [{"type": "object",
                    "properties": {"name": {"const": t.name}, key: t.parameters},
                    "required": ["name", key], "additionalProperties": False}
                   for t in plan.allowed]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return GuidedDecoding(kind="tool_calls", schema=json.dumps(schema),
                              begin=self.call_begin, end=self.call_end,
                              repeat=plan.repeat)

    @abstractmethod
    def instruction(self, tools: Sequence[Tool]) -> str:
        """The system-prompt block that offers `tools` when the template cannot."""

    def call_text(self, name: str, arguments: dict[str, Any]) -> str:
        """One call of the history, spelled as the model would write it."""
        call = json.dumps({"name": name, self.arguments_keys[0]: arguments},
                          ensure_ascii=False)
        return f"{self.call_begin}{call}{self.call_end}"

    calls_separator: ClassVar[str] = "\n"

    @abstractmethod
    def result_text(self, content: str) -> str:
        """A tool's answer, as the user turn that carries it back shows it."""


class HermesParser(ToolParser):
    name = "hermes"
    call_begin = "<tool_call>\n"
    call_end = "\n</tool_call>"
    _OPEN, _CLOSE = "<tool_call>", "</tool_call>"

    def open(self, buf: str, pos: int, at_start: bool, final: bool) -> tuple[str, int, int]:
        at = buf.find(self._OPEN, pos)
        if at >= 0:
            return "open", at, at + len(self._OPEN)
        return "hold", len(buf) - (0 if final else held_prefix(buf, pos, self._OPEN)), 0

    def tail(self, buf: str, pos: int, final: bool) -> tuple[str, int, int]:
        i = skip_ws(buf, pos)
        end = literal(buf, i, self._CLOSE)
        if end == NEED:
            return ("outside", len(buf), 0) if final else ("need", 0, 0)
        return ("outside", pos, 0) if end == FAIL else ("outside", end, 0)

    def instruction(self, tools: Sequence[Tool]) -> str:
        listed = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
        return ("# Tools\n\nYou can call functions to answer the user. Their signatures are "
                f"inside <tools></tools> XML tags:\n<tools>\n{listed}\n</tools>\n\n"
                "To call a function, write a JSON object with its name and arguments inside "
                "<tool_call></tool_call> XML tags, one block per call:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')

    def result_text(self, content: str) -> str:
        return f"<tool_response>\n{content}\n</tool_response>"


class Llama3JsonParser(ToolParser):
    name = "llama3_json"
    arguments_keys = ("parameters", "arguments")
    call_begin = ""
    call_end = ""
    calls_separator = "; "
    _TAG = "<|python_tag|>"

    def open(self, buf: str, pos: int, at_start: bool, final: bool) -> tuple[str, int, int]:
        if not at_start:
            return "text", 0, 0
        i = skip_ws(buf, pos)
        end = literal(buf, i, self._TAG)
        if end >= 0:
            i = skip_ws(buf, end)
        if i >= len(buf) or end == NEED:
            return ("text", 0, 0) if final else ("hold", pos, 0)
        return ("open", pos, i) if buf[i] == "{" else ("text", 0, 0)

    def tail(self, buf: str, pos: int, final: bool) -> tuple[str, int, int]:
        i = skip_ws(buf, pos)
        if i >= len(buf):
            return ("outside", len(buf), 0) if final else ("need", 0, 0)
        return ("next", i, i + 1) if buf[i] == ";" else ("text", pos, 0)

    def guided(self, plan: ToolPlan) -> GuidedDecoding:
        # Llama 3.1 makes one JSON call a turn; `;`-joined calls are not what it was taught.
        single = ToolPlan(plan.tools, plan.choice, plan.named, parallel=False)
        assert not single.repeat
        return super().guided(single)

    def instruction(self, tools: Sequence[Tool]) -> str:
        listed = "\n\n".join(json.dumps(t.as_openai(), indent=4, ensure_ascii=False)
                             for t in tools)
        return ("You can call functions to answer the user. To call one, answer with only a "
                'JSON object of the form {"name": function name, "parameters": dictionary of '
                "argument names and values}. The functions:\n\n" + listed)

    def result_text(self, content: str) -> str:
        return content


PARSERS: dict[str, type[ToolParser]] = {c.name: c for c in (HermesParser, Llama3JsonParser)}


def parser_for(template: str | None, name: str | None = None) -> ToolParser:
    """`name` (`--tool-call-parser`) when given, else the format the chat template spells;
    Hermes when it spells none, since that is what ARuntime's own tool prompt teaches."""
    if name is not None:
        if name not in PARSERS:
            raise ValueError(f"unknown tool-call parser {name!r}; known: {', '.join(PARSERS)}")
        return PARSERS[name]()
    text = template or ""
    if "<tool_call>" not in text and ("<|python_tag|>" in text or '"parameters"' in text):
        return Llama3JsonParser()
    return HermesParser()
