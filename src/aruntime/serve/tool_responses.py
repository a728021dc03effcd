"""A chat choice's answer shaped for a request that offered tools: `message.tool_calls` and
`finish_reason: "tool_calls"` in one body, or OpenAI's deltas when streamed (a call's id and
name first, then its arguments in pieces). Both come from the same reader, so the streamed call
assembles to the body's."""

from __future__ import annotations

from typing import Any

from aruntime.serve.tool_parsers import ToolParser
from aruntime.serve.tool_specs import ToolPlan
from aruntime.serve.tool_stream import Delta, ToolCallStream


def finish_reason(reason: str | None, called: bool) -> str | None:
    """A turn that ended naturally after calls ends for the calls; a cut one keeps its reason."""
    return "tool_calls" if called and reason == "stop" else reason


def full_message(parser: ToolParser, plan: ToolPlan, text: str,
                 reason: str | None) -> tuple[dict[str, Any], str | None]:
    """The assistant message and the finish reason of a whole answer."""
    parsed = parser.parse(text, [t.name for t in plan.tools])
    message: dict[str, Any] = {"role": "assistant", "refusal": None}
    if parsed.calls:
        message["content"] = parsed.content
        message["tool_calls"] = [c.as_openai() for c in parsed.calls]
    else:
        message["content"] = parsed.content or ""
    return message, finish_reason(reason, bool(parsed.calls))


class StreamedTools:
    """One choice's answer read as it streams."""

    def __init__(self, parser: ToolParser, plan: ToolPlan) -> None:
        self._reader: ToolCallStream = parser.stream([t.name for t in plan.tools])
        self.called = False

    def push(self, text: str, finished: bool) -> list[dict[str, Any]]:
        """The deltas this text completes (and, at the end, whatever was held back)."""
        deltas = self._reader.push(text) if text else []
        if finished:
            deltas += self._reader.finish()
        return [self._shape(d) for d in deltas]

    def _shape(self, delta: Delta) -> dict[str, Any]:
        if isinstance(delta, str):
            return {"content": delta}
        self.called = True
        return {"tool_calls": [delta.as_openai()]}
