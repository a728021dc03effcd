"""Tools the MCP tests serve (`aruntime serve --tools mcp_tools_example`); each call is counted
so a test can tell what really ran on the server."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aruntime.agents.tools import tool

CALLS: Counter[str] = Counter()
NUMBERS = {"type": "object", "required": ["a", "b"], "additionalProperties": False,
           "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
SUM = {"type": "object", "required": ["sum"], "properties": {"sum": {"type": "integer"}}}
REFUND_IN = {"type": "object", "required": ["order", "amount"],
             "properties": {"order": {"type": "string"}, "amount": {"type": "integer"}}}
REFUND_OUT = {"type": "object", "required": ["refunded", "key"],
              "properties": {"refunded": {"type": "integer"}, "key": {"type": "string"}}}


@tool(input_schema=NUMBERS, output_schema=SUM)
def add(args: dict[str, Any]) -> dict[str, Any]:
    """Add two integers."""
    CALLS["add"] += 1
    return {"sum": args["a"] + args["b"]}


@tool(input_schema=REFUND_IN, output_schema=REFUND_OUT, side_effect=True)
def refund(args: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    """Refund an order (a side effect: once per idempotency key)."""
    CALLS[f"refund:{idempotency_key}"] += 1
    return {"refunded": args["amount"], "key": idempotency_key}


@tool(input_schema=NUMBERS, output_schema=SUM)
def secret_sum(args: dict[str, Any]) -> dict[str, Any]:
    """Nobody may list or call this one."""
    CALLS["secret_sum"] += 1
    return {"sum": args["a"] + args["b"]}
