"""The tool-calling parts of a chat request: `tools`, `tool_choice`, `parallel_tool_calls`, and
the assistant `tool_calls` and `tool` messages of its history, checked into one `ToolPlan`.
Every malformed shape is a 400 that names its `param`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field

from aruntime.serve.errors import InvalidRequestError

NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names
CHOICES = ("none", "auto", "required")


class _Shape(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class FunctionSpec(_Shape):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of an object; None: no arguments
    strict: bool | None = None


class ToolSpec(_Shape):
    type: Literal["function"]
    function: FunctionSpec


class CalledFunction(_Shape):
    name: str = Field(pattern=NAME_PATTERN)
    arguments: str  # JSON text of an object, as OpenAI sends it back


class ToolCallIn(_Shape):
    """A call in an assistant message of the history."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: CalledFunction


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None
    parameters: dict[str, Any]  # always an object schema

    def as_openai(self) -> dict[str, Any]:
        """The `{"type": "function", "function": ...}` dict templates and prompts show."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What a request offers the model and what it demands of the answer."""

    tools: tuple[Tool, ...]
    choice: str  # "none" | "auto" | "required" | "function" (one named function)
    named: str | None = None  # the function, when choice is "function"
    parallel: bool | None = None  # parallel_tool_calls as sent; None: not sent

    @property
    def offered(self) -> bool:
        """Tools reach the prompt and the output is parsed for calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def constrained(self) -> bool:
        return self.choice in ("required", "function")

    @property
    def repeat(self) -> bool:
        """A required answer may hold several calls only when the client asks for parallel
        calls in so many words: OpenAI's default (true) would let a small model that never
        stops calling (SmolLM2-135M repeats calls until max_tokens, greedy or not) cut its
        last call short, so an unsaid default means one call."""
        return self.parallel is True and self.choice == "required"

    @property
    def allowed(self) -> tuple[Tool, ...]:
        """The tools a constrained call may name."""
        return tuple(t for t in self.tools if self.named in (None, t.name))


NO_TOOLS = ToolPlan((), "none")


def tool_plan(tools: list[ToolSpec] | None, tool_choice: Any,
              parallel_tool_calls: bool | None) -> ToolPlan:
    if tools is None:
        if tool_choice is not None:
            raise InvalidRequestError("tool_choice is only allowed when tools are given",
                                      param="tool_choice")
        return NO_TOOLS
    if not tools:
        raise InvalidRequestError("tools must not be empty (leave it out instead)",
                                  param="tools")
    checked = tuple(_tool(i, t) for i, t in enumerate(tools))
    names = [t.name for t in checked]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InvalidRequestError(f"tool names must be unique: {name!r} appears twice",
                                      param=f"tools[{i}].function.name")
    choice, named = _choice(tool_choice, names)
    return ToolPlan(checked, choice, named, parallel_tool_calls)


def _tool(i: int, spec: ToolSpec) -> Tool:
    fn = spec.function
    params = fn.parameters if fn.parameters is not None else {"type": "object",
                                                              "properties": {}}
    param = f"tools[{i}].function.parameters"
    if params.get("type") != "object":
        raise InvalidRequestError("parameters must be a JSON Schema of type 'object'",
                                  param=param)
    try:
        jsonschema.validators.validator_for(params).check_schema(params)
    except jsonschema.SchemaError as exc:
        raise InvalidRequestError(f"parameters is not a valid JSON Schema: {exc.message}",
                                  param=param) from None
    return Tool(fn.name, fn.description, params)


def _choice(value: Any, names: list[str]) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in CHOICES:
            raise InvalidRequestError(
                f"tool_choice must be one of {', '.join(CHOICES)} or a named function; "
                f"got {value!r}", param="tool_choice")
        return value, None
    fn = value.get("function") if isinstance(value, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(
            name, str):
        raise InvalidRequestError(
            'tool_choice must be a string or {"type": "function", "function": {"name": ...}}',
            param="tool_choice")
    if name not in names:
        raise InvalidRequestError(f"tool_choice names {name!r}, which is not one of the tools",
                                  param="tool_choice.function.name")
    return "function", name


def history_calls(i: int, role: str, calls: list[ToolCallIn] | None) -> list[dict[str, Any]]:
    """An assistant message's calls in OpenAI's shape, their arguments checked to be JSON
    objects (templates and our own prompts need them as dicts)."""
    if calls is None:
        return []
    if role != "assistant":
        raise InvalidRequestError("only assistant messages may hold tool_calls",
                                  param=f"messages[{i}].tool_calls")
    out = []
    for j, call in enumerate(calls):
        arguments_of(call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")
        out.append({"id": call.id, "type": "function",
                    "function": {"name": call.function.name,
                                 "arguments": call.function.arguments}})
    return out


def arguments_of(text: str, param: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError("arguments must be a JSON object in a string", param=param)
    return value
