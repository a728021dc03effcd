"""What ARuntime enforces equals Cedar's own answer, at every decision point, through the HTTP
API and the runner — not just the library. A 60-rule policy (permits and forbids over actions,
roles, tenants, request facts and tool arguments), principals with real API keys, and
hypothesis choosing principal x action x resource x context; each answer is checked against
`cedarpy.is_authorized` on the policy text, evaluated apart from the server's cached handle."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import cedarpy
import httpx
import httpx2
import pytest
from agent_flows import pay
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from aruntime.agents.runner import Runner
from aruntime.durable.journal import SqliteJournal
from aruntime.durable.states import RunStatus
from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model
from aruntime.policy.api_keys import KEYS_FILE, KeyAuth, KeyStore
from aruntime.policy.cedar_authorizer import CedarAuthorizer, CedarPolicy, minute_now
from aruntime.policy.identity import Principal
from aruntime.serve.launch import BackgroundServer, background_server

PRINCIPALS = [("p0", "a", ()), ("p1", "a", ("user",)), ("p2", "a", ("admin", "user")),
              ("p3", "b", ("user",)), ("p4", "b", ("auditor",)), ("p5", "c", ("guest", "user"))]
ACTIONS = ["invoke_model", "publish_shared_prefix", "check_output", "read_evidence",
           "call_tool", "list_tools", "start_run"]
CONDITIONS = [
    'principal.roles.contains("{role}")',
    "context.tenant == principal.tenant",
    'principal.tenant == "{tenant}"',
    "context has shared_prefix_tokens && context.shared_prefix_tokens > {n}",
    "context has input && context.input has amount && context.input.amount > {n}",
    'resource has tenant && resource.tenant == "{tenant}"',
]
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def sixty_rules(seed: int = 59) -> str:
    rng = random.Random(seed)
    rules = ['@id("base") permit (principal, action, resource) when '
             '{ context.tenant == principal.tenant && principal.roles.contains("user") };']
    while len(rules) < 60:
        actions = rng.sample(ACTIONS, rng.choice((1, 1, 2)))
        conds = [rng.choice(CONDITIONS).format(role=rng.choice(("user", "admin", "auditor",
                                                                 "guest")),
                                               tenant=rng.choice("abc"),
                                               n=rng.choice((8, 20, 40, 100)))
                 for _ in range(rng.choice((1, 2)))]
        effect = "forbid" if rng.random() < 0.3 else "permit"
        if effect == "forbid":  # narrower than the permits, so both answers are common
            conds.append(rng.choice(CONDITIONS[:3]).format(role=rng.choice(("admin", "guest")),
                                                           tenant=rng.choice("bc"), n=0))
        scope = ", ".join(f'ARuntime::Action::"{a}"' for a in actions)
        rules.append(f'@id("r{len(rules)}") {effect} (principal, action in [{scope}], resource) '
                     f"when {{ {' && '.join(conds)} }};")
    return "\n".join(rules)


POLICY = sixty_rules()


def cedar_says(who: tuple[str, str, tuple[str, ...]], action: str, resource: tuple[str, str],
               attrs: dict[str, Any], context: dict[str, Any]) -> bool:
    pid, tenant, roles = who
    entities = [{"uid": {"type": "ARuntime::Principal", "id": pid}, "parents": [],
                 "attrs": {"tenant": tenant, "roles": list(roles)}},
                {"uid": {"type": f"ARuntime::{resource[0]}", "id": resource[1]}, "parents": [],
                 "attrs": attrs}]
    request = {"principal": {"type": "ARuntime::Principal", "id": pid},
               "action": {"type": "ARuntime::Action", "id": action},
               "resource": {"type": f"ARuntime::{resource[0]}", "id": resource[1]},
               "context": {"time": minute_now(), **context}}
    return bool(cedarpy.is_authorized(request, POLICY, entities).allowed)


def completion_allowed(who: tuple[str, str, tuple[str, ...]], shared: int) -> bool:
    """A completion's three decisions: the model, the shared prefix (if any), the output."""
    ctx = {"tenant": who[1], "model": "tiny",
           **({"shared_prefix_tokens": shared} if shared else {})}
    model = ("Model", "tiny"), {"name": "tiny"}
    return cedar_says(who, "invoke_model", *model, ctx) and (
        not shared or cedar_says(who, "publish_shared_prefix", *model, ctx)) and cedar_says(
        who, "check_output", *model, {"tenant": who[1], "model": "tiny", "findings": []})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackgroundServer,
                                                                      dict[str, str]]]:
    data = tmp_path_factory.mktemp("property")
    store = KeyStore(data / KEYS_FILE)
    keys = {pid: store.create(t, pid, roles)[1].reveal() for pid, t, roles in PRINCIPALS}
    config = EngineConfig(model=str(resolve_model("demo")), max_model_len=256,
                          kv_cache_bytes=8 * 1024 * 1024)
    authorizer = CedarAuthorizer(CedarPolicy.parse(POLICY, validate=False))
    with background_server(config, data, served_model_name="tiny", authorizer=authorizer,
                           authenticator=KeyAuth(store), tools=[pay]) as srv:
        yield srv, keys


who_st = st.sampled_from(PRINCIPALS)


@SETTINGS
@given(who=who_st, shared=st.sampled_from((0, 16, 32, 64)))
def test_a_completion_is_allowed_exactly_when_cedar_allows_each_of_its_decisions(
        world: tuple[BackgroundServer, dict[str, str]], who: Any, shared: int) -> None:
    srv, keys = world
    ext = {"shared_prefix_tokens": shared} if shared else {}
    with httpx.Client(base_url=srv.url, timeout=60,
                      headers={"Authorization": f"Bearer {keys[who[0]]}"}) as http:
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "a " * 70,
                                               "max_tokens": 1, "aruntime": ext})
        listed = http.get("/v1/models").json()["data"]
    assert r.status_code == (200 if completion_allowed(who, shared) else 403), r.text
    assert bool(listed) == cedar_says(who, "invoke_model", ("Model", "tiny"), {"name": "tiny"},
                                      {"tenant": who[1], "model": "tiny"})


@SETTINGS
@given(who=who_st, owner=who_st)
def test_reading_a_run_is_allowed_exactly_when_cedar_allows_it(
        world: tuple[BackgroundServer, dict[str, str]], who: Any, owner: Any) -> None:
    srv, keys = world
    runner: Runner = srv.app.state.runner
    run_id = f"run-{owner[0]}"
    if runner.journal.get_run(run_id) is None:
        runner.start("agent_flows:ask_name", None, run_id=run_id,
                     principal=Principal(owner[0], owner[1], frozenset(owner[2]), "key"))
    with httpx.Client(base_url=srv.url, timeout=60,
                      headers={"Authorization": f"Bearer {keys[who[0]]}"}) as http:
        status = http.get(f"/v1/runs/{run_id}").status_code
    attrs = {"tenant": owner[1], "flow": "agent_flows:ask_name"}
    allowed = cedar_says(who, "read_evidence", ("Run", run_id), attrs, {"tenant": owner[1]})
    assert status == (200 if allowed else 403)


@SETTINGS
@given(who=who_st, amount=st.integers(min_value=0, max_value=150))
def test_a_flows_tool_call_is_allowed_exactly_when_cedar_allows_it(
        tmp_path_factory: pytest.TempPathFactory, who: Any, amount: int) -> None:
    journal = SqliteJournal(tmp_path_factory.mktemp("runs") / "runs.db")
    runner = Runner(journal, authorizer=CedarAuthorizer(CedarPolicy.parse(POLICY,
                                                                          validate=False)))
    result = runner.start("agent_flows:pay_once", {"amount": amount},
                          principal=Principal(who[0], who[1], frozenset(who[2]), "key"))
    allowed = cedar_says(who, "call_tool", ("Tool", "pay"), {"name": "pay", "side_effect": False},
                         {"tenant": who[1], "input": {"amount": amount}})
    assert (result.status == RunStatus.COMPLETED) == allowed, result.error
    journal.close()


@SETTINGS
@given(who=who_st, amount=st.integers(min_value=0, max_value=150))
def test_an_mcp_tool_call_and_listing_follow_cedar(
        world: tuple[BackgroundServer, dict[str, str]], who: Any, amount: int) -> None:
    srv, keys = world

    async def over_mcp() -> tuple[list[str], bool]:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {keys[who[0]]}"},
                                  timeout=30)
        async with Client(streamable_http_client(f"{srv.url}/mcp", http_client=http)) as c:
            listed = [t.name for t in (await c.list_tools()).tools]
            try:
                await c.call_tool("pay", {"amount": amount})
            except MCPError:
                return listed, False
            return listed, True

    listed, called = asyncio.run(over_mcp())
    tool = ("Tool", "pay"), {"name": "pay", "side_effect": False}
    assert called == cedar_says(who, "call_tool", *tool,
                                {"tenant": who[1], "input": {"amount": amount}})
    assert (listed == ["pay"]) == cedar_says(who, "list_tools", *tool, {"tenant": who[1]})


def test_the_policy_has_sixty_rules_and_decides_both_ways() -> None:
    assert POLICY.count("@id(") == 60
    assert "forbid" in POLICY and POLICY.count("permit") > 30
    completions = {completion_allowed(who, n) for who in PRINCIPALS for n in (0, 16, 32, 64)}
    runs = {cedar_says(who, "read_evidence", ("Run", "r"), {"tenant": o[1], "flow": "f"},
                       {"tenant": o[1]}) for who in PRINCIPALS for o in PRINCIPALS}
    tools = {cedar_says(who, "call_tool", ("Tool", "pay"), {"name": "pay", "side_effect": False},
                        {"tenant": who[1], "input": {"amount": n}})
             for who in PRINCIPALS for n in (0, 50, 150)}
    assert completions == runs == tools == {True, False}, "allows and denials at every point"
