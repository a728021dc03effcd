"""Tools over MCP: the official `mcp` client against a real server on a loopback socket lists
only the tools the policy permits, calls one, and is refused a forbidden one with an MCP error
that the signed decision log records."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_tools_example import CALLS, add, refund, secret_sum

from aruntime.contracts import DecisionRecord
from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model
from aruntime.evidence.log import verify
from aruntime.policy.api_keys import KEYS_FILE, KeyAuth, KeyStore
from aruntime.policy.cedar_authorizer import CedarAuthorizer, CedarPolicy
from aruntime.serve.launch import BackgroundServer, background_server
from aruntime.serve.mcp_server import POLICY_DENIED

POLICY = """
@id("own-tenant")
permit (principal, action, resource) when { context.tenant == principal.tenant };
@id("secret-is-secret")
forbid (principal, action, resource == ARuntime::Tool::"secret_sum");
@id("small-refunds")
forbid (principal, action == ARuntime::Action::"call_tool", resource == ARuntime::Tool::"refund")
when { context has input && context.input has amount && context.input.amount > 100 };
"""
HEADERS: dict[str, str] = {}  # the key's, once the server has made it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    data = tmp_path_factory.mktemp("mcp")
    store = KeyStore(data / KEYS_FILE)
    HEADERS["Authorization"] = f"Bearer {store.create('acme', 'agent-1')[1].reveal()}"
    config = EngineConfig(model=str(resolve_model("demo")), max_model_len=128,
                          kv_cache_bytes=4 * 1024 * 1024)
    authorizer = CedarAuthorizer(CedarPolicy.parse(POLICY))
    with background_server(config, data, authorizer=authorizer, authenticator=KeyAuth(store),
                           tools=[add, refund, secret_sum]) as srv:
        yield srv


def session(server: BackgroundServer, headers: dict[str, str] | None = None) -> Client:
    http = httpx2.AsyncClient(headers=headers if headers is not None else HEADERS, timeout=30)
    return Client(streamable_http_client(f"{server.url}/mcp", http_client=http))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def decision_log(server: BackgroundServer) -> list[dict[str, Any]]:
    path: Path = server.app.state.server.data_dir / "decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_without_a_key_the_mcp_endpoint_is_a_401(server: BackgroundServer) -> None:
    async def listed() -> None:
        async with session(server, {}) as c:
            await c.list_tools()

    with pytest.raises(BaseException, match="unhandled errors"):  # the SDK's task group
        run(listed())
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers, status in (({}, 401), ({"Authorization": "Bearer ark_nope"}, 401)):
        r = httpx2.post(f"{server.url}/mcp", json=body, headers=headers)
        assert r.status_code == status and r.json()["error"]["type"] == "authentication_error"


def test_the_list_shows_only_permitted_tools(server: BackgroundServer) -> None:
    async def listed() -> list[types.Tool]:
        async with session(server) as c:
            return list((await c.list_tools()).tools)

    tools = run(listed())
    assert sorted(t.name for t in tools) == ["add", "refund"]
    by_name = {t.name: t for t in tools}
    assert by_name["add"].input_schema == add.input_schema
    assert by_name["refund"].annotations is not None
    assert by_name["refund"].annotations.destructive_hint is True


def test_a_permitted_call_runs_and_a_forbidden_one_is_refused(server: BackgroundServer) -> None:
    async def calls() -> tuple[Any, Any, MCPError]:
        async with session(server) as c:
            ok = await c.call_tool("add", {"a": 2, "b": 3})
            small = await c.call_tool("refund", {"order": "o1", "amount": 5},
                                      meta={"aruntime/idempotency_key": "k-1"})
            with pytest.raises(MCPError) as refused:
                await c.call_tool("refund", {"order": "o2", "amount": 500})
            return ok, small, refused.value

    before = CALLS.copy()
    ok, small, refused = run(calls())
    assert ok.structured_content == {"sum": 5} and not ok.is_error
    assert small.structured_content == {"refunded": 5, "key": "k-1"}
    assert refused.code == POLICY_DENIED and "small-refunds" in refused.message
    assert CALLS["add"] == before["add"] + 1 and CALLS["refund:k-1"] == before["refund:k-1"] + 1
    assert sum(CALLS.values()) == sum(before.values()) + 2  # the refused one never ran
    denied = [r for r in decision_log(server) if r["decision"]["decision"] == "deny"
              and r["decision"]["action"] == "call_tool"]
    assert denied[-1]["decision"]["reasons"] == ["small-refunds"]
    assert denied[-1]["arg_digest"].startswith("sha256:") and "order" not in json.dumps(denied)


def test_arguments_that_misfit_the_schema_are_a_tool_error(server: BackgroundServer) -> None:
    async def bad() -> tuple[Any, MCPError]:
        async with session(server) as c:
            misfit = await c.call_tool("add", {"a": "two", "b": 3})
            with pytest.raises(MCPError) as unknown:
                await c.call_tool("nope", {})
            return misfit, unknown.value

    before = CALLS["add"]
    misfit, unknown = run(bad())
    assert misfit.is_error and "tool add input at a" in misfit.content[0].text
    assert unknown.code == types.INVALID_PARAMS
    assert CALLS["add"] == before


def test_the_decision_log_is_signed_and_shows_tampering(server: BackgroundServer,
                                                        tmp_path: Path) -> None:
    state = server.app.state.server
    path = state.data_dir / "decisions.jsonl"
    assert decision_log(server), "the other tests' decisions are there"
    key = state.signer.public_key
    assert verify(path, key, contract=DecisionRecord).ok
    lines = path.read_text().splitlines()
    tampered = tmp_path / "decisions.jsonl"
    tampered.write_text("\n".join([lines[0].replace('"allow"', '"deny"'), *lines[1:]]) + "\n")
    assert not verify(tampered, key, contract=DecisionRecord).ok


def test_a_flow_calls_an_external_mcp_servers_tools(server: BackgroundServer,
                                                    tmp_path: Path) -> None:
    from aruntime.agents.runner import Runner
    from aruntime.durable.journal import SqliteJournal
    from aruntime.durable.states import RunStatus

    runner = Runner(SqliteJournal(tmp_path / "runs.db"))
    before = CALLS.copy()
    url = f"{server.url}/mcp"
    auth = HEADERS["Authorization"]
    result = runner.start("agent_flows:remote_refund",
                          {"url": url, "amount": 4, "authorization": auth}, run_id="x")
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.result["refunded"] == 5
    key = result.result["key"]  # the journal's idempotency key reached the remote tool
    assert CALLS[f"refund:{key}"] == 1 and CALLS["add"] == before["add"] + 1
    runner.journal.set_status("x", RunStatus.RUNNING)
    assert runner.resume("x").result == result.result  # replayed from the journal
    assert CALLS[f"refund:{key}"] == 1 and CALLS["add"] == before["add"] + 1
    refused = runner.start("agent_flows:remote_refund",
                           {"url": url, "amount": 200, "authorization": auth}, run_id="y")
    assert refused.status == RunStatus.FAILED and "small-refunds" in (refused.error or "")
