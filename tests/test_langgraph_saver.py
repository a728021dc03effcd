"""JournalSaver against LangGraph's own conformance suite and real graphs, on SQLite and
PostgreSQL (the `journal` fixture runs each test on both)."""

from __future__ import annotations

import asyncio
import operator
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.channels import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from aruntime.agents.langgraph_saver import JournalSaver
from aruntime.durable.journal import SqlJournal, open_journal


def _reopen(journal: SqlJournal) -> SqlJournal:
    """A second, independent handle on the same database, as a restarted process opens it."""
    return open_journal(getattr(journal, "url", None) or journal.path)  # type: ignore[attr-defined]


def test_conformance_suite_passes_every_capability(journal: SqlJournal) -> None:
    @checkpointer_test(name=f"JournalSaver[{type(journal).__name__}]")
    async def saver() -> AsyncIterator[JournalSaver]:
        yield JournalSaver(journal)  # a fresh saver per capability suite, one database

    report = asyncio.run(validate(saver))
    results = report.results
    assert set(results) == {c.value for c in ALL_CAPABILITIES}
    failures = [f for r in results.values() for f in r.failures]
    assert not failures, failures
    # nothing skipped: every capability, extended ones included, detected and run
    assert all(r.detected and r.passed and r.tests_skipped == 0 for r in results.values())
    assert sum(r.tests_passed for r in results.values()) >= 81  # conformance 0.0.2 has 81
    assert report.conformance_level() == "FULL"


def test_processes_opening_a_fresh_database_at_once_all_get_a_saver(journal: SqlJournal) -> None:
    # PostgreSQL fails all but one concurrent CREATE TABLE IF NOT EXISTS of a new table
    handles = [_reopen(journal) for _ in range(6)]
    start = threading.Barrier(len(handles))

    def open_saver(handle: SqlJournal) -> JournalSaver:
        start.wait()
        return JournalSaver(handle)

    try:
        with ThreadPoolExecutor(len(handles)) as pool:
            savers = [*pool.map(open_saver, handles)]  # re-raises a thread's error here
        assert savers[0].get_tuple({"configurable": {"thread_id": "none"}}) is None
    finally:
        for h in handles:
            h.close()


# -- a real graph: plan -> approve (asks a human) -> act


class Ticket(TypedDict):
    request: str
    log: Annotated[list[str], operator.add]


def _ticket_graph(saver: BaseCheckpointSaver[Any], ran: list[str]) -> Any:
    def plan(state: Ticket) -> dict[str, Any]:
        ran.append("plan")
        return {"log": [f"plan {state['request']}"]}

    def approve(state: Ticket) -> dict[str, Any]:
        ran.append("approve")
        answer = interrupt({"question": f"run {state['request']}?"})
        return {"log": [f"approved: {answer}"]}

    def act(state: Ticket) -> dict[str, Any]:
        ran.append("act")
        return {"log": [f"done {state['request']}"]}

    g = StateGraph(Ticket)
    for name, fn in (("plan", plan), ("approve", approve), ("act", act)):
        g.add_node(name, fn)
    g.add_edge(START, "plan")
    g.add_edge("plan", "approve")
    g.add_edge("approve", "act")
    g.add_edge("act", END)
    return g.compile(checkpointer=saver)


def _drive(saver_before: BaseCheckpointSaver[Any], saver_after: BaseCheckpointSaver[Any],
           thread: str, *, resume_async: bool) -> tuple[Any, list[str], list[tuple[Any, ...]]]:
    """Run to the human question with one saver; answer it and start the thread's next
    request with another. Returns the last state, the nodes run, and the history's
    (source, step, next) newest first."""
    ran: list[str] = []
    config = {"configurable": {"thread_id": thread}}
    first = _ticket_graph(saver_before, ran).invoke({"request": "deploy", "log": []}, config)
    assert first["__interrupt__"][0].value == {"question": "run deploy?"}

    graph = _ticket_graph(saver_after, ran)
    paused = graph.get_state(config)
    assert paused.next == ("approve",)
    assert paused.values["log"] == ["plan deploy"]
    resume: Command[Any] = Command(resume="yes")
    done = (asyncio.run(graph.ainvoke(resume, config)) if resume_async
            else graph.invoke(resume, config))
    assert done["log"] == ["plan deploy", "approved: yes", "done deploy"]
    graph.invoke({"request": "rollback"}, config)  # same thread: the log carries on
    history = [(s.metadata["source"], s.metadata["step"], s.next)
               for s in graph.get_state_history(config)]
    return graph.get_state(config), ran, history


def test_graph_pauses_and_resumes_from_a_fresh_saver(journal: SqlJournal, tmp_path: Path) -> None:
    reopened = _reopen(journal)
    try:
        state, ran, history = _drive(JournalSaver(journal), JournalSaver(reopened), "t-1",
                                    resume_async=True)
    finally:
        reopened.close()
    assert state.values["log"] == ["plan deploy", "approved: yes", "done deploy", "plan rollback"]
    assert state.next == ("approve",)
    assert state.tasks[0].interrupts[0].value == {"question": "run rollback?"}
    # the resume re-entered `approve` but did not run `plan` again
    assert ran == ["plan", "approve", "approve", "act", "plan", "approve"]

    # the stock SQLite saver (sync only), given the same script, records the same history
    conn = sqlite3.connect(tmp_path / "stock.db", check_same_thread=False)
    try:
        stock_state, _, stock_history = _drive(SqliteSaver(conn), SqliteSaver(conn), "t-1",
                                                resume_async=False)
    finally:
        conn.close()
    assert state.values == stock_state.values
    assert history == stock_history


# -- delta channels: prune keeps the writes a kept checkpoint replays from


def _append(state: list[int], writes: Sequence[list[int]]) -> list[int]:
    return state + [x for w in writes for x in w]


class Tally(TypedDict):
    seen: Annotated[list[int], DeltaChannel(_append, snapshot_frequency=4)]


def _tally_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    def count(state: Tally) -> dict[str, Any]:
        return {"seen": [len(state["seen"])]}

    g = StateGraph(Tally)
    g.add_node("count", count)
    g.add_edge(START, "count")
    g.add_edge("count", END)
    return g.compile(checkpointer=saver)


def test_prune_keeps_what_delta_channels_replay(journal: SqlJournal) -> None:
    saver = JournalSaver(journal)
    config: RunnableConfig = {"configurable": {"thread_id": "tally"}}
    graph = _tally_graph(saver)
    for _ in range(5):  # a snapshot every second run: the fifth's head holds no snapshot
        graph.invoke({"seen": [-1]}, config)
    before = graph.get_state(config).values["seen"]
    assert before == [-1, 1, -1, 3, -1, 5, -1, 7, -1, 9]
    checkpoints = len([*saver.list(config)])

    saver.prune(["tally"], strategy="keep_latest")
    kept = len([*saver.list(config)])
    assert 1 < kept < checkpoints  # the head needs ancestors back to its last snapshot

    reopened = _reopen(journal)
    try:
        assert _tally_graph(JournalSaver(reopened)).get_state(config).values["seen"] == before
    finally:
        reopened.close()
