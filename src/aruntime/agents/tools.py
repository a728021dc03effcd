"""Tools a flow calls: JSON Schema in and out (the shape MCP declares), validated around every
call; a side-effecting tool also takes an idempotency key and may offer a reconcile hook.

A side-effecting call is journaled as intent -> (approval) -> attempt -> outcome. When a process
dies between attempt and outcome nobody knows whether the effect happened: the runtime never
calls the tool again blindly but asks `reconcile(args, key)`, which looks the key up where the
effect would be (a payment id, a ticket number) and answers `Applied(output)`, `NOT_APPLIED`
(safe to call again) or None (cannot tell: the call stays `unknown` for a person to resolve).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema


class ToolInputError(ValueError):
    """Arguments that do not fit the tool's input schema (nothing was called)."""


class ToolOutputError(RuntimeError):
    """The tool answered something that does not fit its output schema."""


@dataclass(frozen=True, slots=True)
class Applied:
    output: Any


class _NotApplied:
    def __repr__(self) -> str:
        return "NOT_APPLIED"


NOT_APPLIED = _NotApplied()
Reconciliation = Applied | _NotApplied | None


@dataclass(frozen=True)
class Tool:
    name: str
    fn: Callable[..., Any]  # fn(args) or, with side effects, fn(args, idempotency_key=...)
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    side_effect: bool = False
    needs_approval: bool = False  # a person approves the exact arguments before the attempt
    reconcile: Callable[[dict[str, Any], str], Reconciliation] | None = None
    description: str = ""
    _input: Any = field(init=False, repr=False, compare=False, default=None)
    _output: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        for schema in (self.input_schema, self.output_schema):
            jsonschema.Draft202012Validator.check_schema(schema)
        # built once: every call of the tool is checked on the way in and out
        object.__setattr__(self, "_input", jsonschema.Draft202012Validator(self.input_schema))
        object.__setattr__(self, "_output", jsonschema.Draft202012Validator(self.output_schema))

    def check_input(self, args: Any) -> None:
        check_json(args, self._input, f"tool {self.name} input", ToolInputError)

    def check_output(self, output: Any) -> None:
        check_json(output, self._output, f"tool {self.name} output", ToolOutputError)

    def invoke(self, args: dict[str, Any], key: str) -> Any:
        return self.fn(args, idempotency_key=key) if self.side_effect else self.fn(args)

    def describe(self) -> dict[str, Any]:
        """The MCP tool shape: name, description, inputSchema, outputSchema."""
        return {"name": self.name, "description": self.description,
                "inputSchema": self.input_schema, "outputSchema": self.output_schema}


def check_json(value: Any, validator: jsonschema.Draft202012Validator, what: str,
               error: type[Exception]) -> None:
    """Raise `error` naming `what` and where in `value` the first misfit with the schema is."""
    found = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    if found:
        where = "/".join(str(p) for p in found[0].path) or "(root)"
        raise error(f"{what} at {where}: {found[0].message}")


def tool(*, input_schema: dict[str, Any], output_schema: dict[str, Any],
         side_effect: bool = False, needs_approval: bool = False,
         reconcile: Callable[[dict[str, Any], str], Reconciliation] | None = None,
         name: str | None = None) -> Callable[[Callable[..., Any]], Tool]:
    """Declare a function a tool: `@tool(input_schema=..., output_schema=...)`."""

    def wrap(fn: Callable[..., Any]) -> Tool:
        return Tool(name or fn.__name__, fn, input_schema, output_schema, side_effect,
                    needs_approval, reconcile, (fn.__doc__ or "").strip())

    return wrap


def tools_from(ref: str) -> list[Tool]:
    """`MODULE:ATTR` (a Tool, or a list of them) or `MODULE` (its module-level Tools), as
    `aruntime serve --tools` names them; ValueError naming what is wrong."""
    import importlib

    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--tools {ref}: cannot import {module_name}: {exc}") from None
    if not attr:
        return [v for v in vars(module).values() if isinstance(v, Tool)]
    value = getattr(module, attr, None)
    found = [value] if isinstance(value, Tool) else list(value or ()) \
        if isinstance(value, list | tuple) else []
    if not found or not all(isinstance(t, Tool) for t in found):
        raise ValueError(f"--tools {ref}: {attr} is not a Tool or a list of Tools")
    return found
