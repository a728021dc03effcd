"""The work `aruntime bench durable` times: ARuntime flows a child process can import by
reference, and the same work as LangGraph graphs, with LangGraph's SqliteSaver set to the
journal's durability."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

from aruntime.agents.flow import FlowContext, flow

THREE_STEPS = "aruntime.bench.durable_work:three_steps"
BENCH_FLOW = "aruntime.bench.durable_work:bench_flow"
STEPS = 3  # per invocation, both systems
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL")


def add(count: int, k: int) -> int:
    return count + k


@flow
def three_steps(ctx: FlowContext, count: int) -> int:
    for k in range(1, STEPS + 1):
        count = ctx.step(add, count, k)
    return count


@flow
def bench_flow(ctx: FlowContext, steps: int) -> int:
    """The long run the recovery measurement kills."""
    count = 0
    for _ in range(steps):
        count = ctx.step(add, count, 1)
    return count


class BareContext:
    """`ctx.step` without a journal: the same flow function, durability off."""

    def step(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Any:
        return fn(*args)


class Counter(TypedDict):
    count: int


def three_node_graph(checkpointer: Any = None) -> Any:
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(Counter)
    names = [f"node_{k}" for k in range(1, STEPS + 1)]
    for k, name in enumerate(names, 1):
        graph.add_node(name, lambda s, k=k: {"count": add(s["count"], k)})
    for a, b in zip([START, *names], [*names, END], strict=True):
        graph.add_edge(a, b)
    return graph.compile(checkpointer=checkpointer)


def loop_graph(checkpointer: Any, steps: int) -> Any:
    """`bench_flow` as a graph: one node, looping until the counter reaches `steps`."""
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(Counter)
    graph.add_node("tick", lambda s: {"count": add(s["count"], 1)})
    graph.add_edge(START, "tick")
    graph.add_conditional_edges("tick", lambda s: "tick" if s["count"] < steps else END)
    return graph.compile(checkpointer=checkpointer)


@contextmanager
def sqlite_saver(path: Path) -> Iterator[Any]:
    """LangGraph's SqliteSaver on a file, with the journal's durability (it sets only WAL)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(path, check_same_thread=False)  # as SqliteSaver.from_conn_string
    try:
        for pragma in PRAGMAS:
            conn.execute(pragma)
        saver = SqliteSaver(conn)
        saver.setup()
        yield saver
    finally:
        conn.close()


def graph_config(thread: str, steps: int = STEPS) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}, "recursion_limit": steps + 10}


def run_loop_graph(path: str, thread: str, steps: int) -> None:
    """The child process of LangGraph's recovery run."""
    with sqlite_saver(Path(path)) as saver:
        loop_graph(saver, steps).invoke({"count": 0}, graph_config(thread, steps),
                                        durability="sync")
