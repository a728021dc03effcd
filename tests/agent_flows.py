"""Flows the agent-run tests start (by reference, `agent_flows:NAME`, as users do), and a ledger:
a SQLite file where steps log each execution and a side-effecting tool applies its effects
keyed by idempotency key, so tests can count what really happened."""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from aruntime.agents.flow import FlowContext, flow
from aruntime.agents.tools import NOT_APPLIED, Applied, Reconciliation, tool


def ledger(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS executions (run TEXT, step INTEGER, at REAL)")
    conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, account TEXT, "
                 "amount INTEGER, invocations INTEGER)")
    return conn


def work(path: str, run: str, step: int, pause_s: float) -> int:
    with ledger(path) as conn:
        conn.execute("INSERT INTO executions VALUES (?, ?, ?)", (run, step, time.time()))
    time.sleep(pause_s)  # the step's own work: gives a kill somewhere to land
    return step * step


TRANSFER_IN = {"type": "object", "required": ["ledger", "account", "amount"],
               "properties": {"ledger": {"type": "string"}, "account": {"type": "string"},
                              "amount": {"type": "integer", "minimum": 1}}}
TRANSFER_OUT = {"type": "object", "required": ["key", "amount"],
                "properties": {"key": {"type": "string"}, "amount": {"type": "integer"}}}


def _reconcile(args: dict[str, Any], key: str) -> Reconciliation:
    row = ledger(args["ledger"]).execute("SELECT amount FROM effects WHERE key = ?",
                                         (key,)).fetchone()
    return Applied({"key": key, "amount": row[0]}) if row else NOT_APPLIED


@tool(input_schema=TRANSFER_IN, output_schema=TRANSFER_OUT, side_effect=True,
      reconcile=_reconcile)
def transfer(args: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    """Move money: applied once per idempotency key, however often it is called."""
    conn = ledger(args["ledger"])
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO effects VALUES (?, ?, ?, 1) ON CONFLICT (key) DO UPDATE SET "
                 "invocations = invocations + 1", (idempotency_key, args["account"],
                                                   args["amount"]))
    conn.execute("COMMIT")
    return {"key": idempotency_key, "amount": args["amount"]}


@tool(input_schema=TRANSFER_IN, output_schema=TRANSFER_OUT, side_effect=True,
      needs_approval=True, reconcile=_reconcile, name="transfer_approved")
def transfer_approved(args: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    return dict(transfer.fn(args, idempotency_key))


@flow
def ten_steps(ctx: FlowContext, inp: dict[str, Any]) -> dict[str, Any]:
    """Ten steps; after each odd one, a transfer. The chaos test kills it anywhere."""
    total, moved = 0, 0
    for i in range(1, 11):
        total += ctx.step(work, inp["ledger"], ctx.run_id, i, inp.get("pause_s", 0.005))
        if i % 2:
            moved += ctx.call_tool(transfer, {"ledger": inp["ledger"], "account": f"a{i}",
                                              "amount": i})["amount"]
    return {"total": total, "moved": moved}


@flow
def approve_then_pay(ctx: FlowContext, inp: dict[str, Any]) -> dict[str, Any]:
    amount = ctx.step(work, inp["ledger"], ctx.run_id, 1, 0.0)
    answer = ctx.wait_for_human("approval", payload={"pay": amount, "to": "acme"},
                                timeout_s=inp.get("timeout_s"), on_timeout={"approved": False})
    if not answer["approved"]:
        return {"paid": 0, "why": "not approved"}
    paid = ctx.call_tool(transfer_approved, {"ledger": inp["ledger"], "account": "acme",
                                             "amount": amount + 1})
    return {"paid": paid["amount"]}


@flow
def ask_name(ctx: FlowContext, inp: Any) -> str:
    answer = ctx.wait_for_human("input", schema={
        "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}})
    return f"hello {answer['name']}"


def _shout(text: str) -> str:
    return text.upper()


def _whisper(text: str) -> str:
    return text.lower()


@flow
def drifting(ctx: FlowContext, inp: dict[str, Any]) -> str:
    """Its first step depends on the environment: changing it while the run waits is the code
    change a determinism error must catch when the run replays."""
    first = ctx.step(_whisper if os.environ.get("AGENT_FLOWS_DRIFT") else _shout, inp["text"])
    ctx.wait_for_human("input", schema={"type": "object"})
    return str(ctx.step(_shout, first + "!"))


@flow
def failing(ctx: FlowContext, inp: Any) -> None:
    ctx.step(_fail, "boom")


def _fail(message: str) -> None:
    raise ValueError(message)


async def _async_double(x: int) -> int:
    return 2 * x


@flow
async def async_flow(ctx: FlowContext, inp: int) -> int:
    return int(await ctx.astep(_async_double, inp)) + 1


@flow
def ask_model(ctx: FlowContext, inp: str) -> dict[str, Any]:
    return ctx.call_model(inp, max_tokens=4)


def _profile(email: str) -> dict[str, Any]:
    return {"email": email, "notes": "x" * 200_000}  # big enough to go to the artifact store


@flow
def remember(ctx: FlowContext, inp: dict[str, Any]) -> str:
    profile = ctx.step(_profile, inp["email"])
    return str(ctx.step(_shout, profile["email"]))


@flow
def notes(ctx: FlowContext, inp: dict[str, Any]) -> Any:
    """Remembers a city in governed memory and reads it back (decided, journaled)."""
    ctx.remember("city", inp["city"], pii=("location",))
    return ctx.recall("city")


@flow
def remote_refund(ctx: FlowContext, inp: dict[str, Any]) -> Any:
    """Calls a tool of an external MCP server through ctx.call_tool."""
    from aruntime.agents.mcp_tools import McpToolbox

    toolbox = McpToolbox(inp["url"], headers={"Authorization": inp["authorization"]})
    total = ctx.call_tool(toolbox.get("add"), {"a": 1, "b": inp["amount"]})["sum"]
    return ctx.call_tool(toolbox.get("refund"), {"order": "o9", "amount": total})


@tool(input_schema={"type": "object", "required": ["amount"],
                    "properties": {"amount": {"type": "integer"}}},
      output_schema={"type": "object"})
def pay(args: dict[str, Any]) -> dict[str, Any]:
    return {"paid": args["amount"]}


@flow
def pay_once(ctx: FlowContext, inp: dict[str, Any]) -> Any:
    """One tool call, decided for the run's principal (the policy property test)."""
    return ctx.call_tool(pay, {"amount": inp["amount"]})
