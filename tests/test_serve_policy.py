"""Serve's decision points through a real server (demo model, `--auth none`, tenants named in
the body): the model call, the shared-prefix publication, the output hook, runs by tenant; every
decision in the request's evidence record; log-only records a denial and lets the request on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model
from aruntime.policy.cedar_authorizer import CedarAuthorizer, CedarPolicy
from aruntime.policy.decision import Mode
from aruntime.serve.launch import BackgroundServer, background_server

POLICY = """
@id("own-tenant")
permit (principal, action, resource) when { context.tenant == principal.tenant };
@id("blocked-tenant")
forbid (principal, action == ARuntime::Action::"invoke_model", resource)
when { context.tenant == "blocked" };
@id("no-sharing-for-solo")
forbid (principal, action == ARuntime::Action::"publish_shared_prefix", resource)
when { context.tenant == "solo" };
@id("no-emails-out")
forbid (principal, action == ARuntime::Action::"check_output", resource)
when { context has findings && context.findings.contains("email") };
"""
EMAIL_SCHEMA = {"type": "object", "required": ["e"], "additionalProperties": False,
                "properties": {"e": {"const": "x@example.com"}}}


def serve(tmp_path: Path, mode: Mode) -> Iterator[BackgroundServer]:
    config = EngineConfig(model=str(resolve_model("demo")), max_model_len=256,
                          kv_cache_bytes=8 * 1024 * 1024)
    authorizer = CedarAuthorizer(CedarPolicy.parse(POLICY), mode)
    with background_server(config, tmp_path, served_model_name="tiny",
                           authorizer=authorizer) as srv:
        yield srv


@pytest.fixture(scope="module")
def enforcing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    yield from serve(tmp_path_factory.mktemp("enforce"), Mode.ENFORCE)


@pytest.fixture(scope="module")
def http(enforcing: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=enforcing.url, timeout=60) as c:
        yield c


def complete(http: httpx.Client, tenant: str, **extra: Any) -> httpx.Response:
    body = {"model": "tiny", "prompt": "hello there", "max_tokens": 4, "temperature": 0,
            "aruntime": {"tenant": tenant, **extra.pop("aruntime", {})}, **extra}
    return http.post("/v1/completions", json=body)


def last_evidence(data_dir: Path) -> dict[str, Any]:
    lines = (data_dir / "evidence.jsonl").read_text().splitlines()
    record: dict[str, Any] = json.loads(lines[-1])
    return record


def test_a_permitted_request_records_its_decision(http: httpx.Client,
                                                  enforcing: BackgroundServer) -> None:
    assert complete(http, "a").status_code == 200
    decisions = last_evidence(enforcing_dir(enforcing))["policy_decisions"]
    assert [d["action"] for d in decisions] == ["invoke_model", "check_output"]
    assert all(d["decision"] == "allow" and d["reasons"] == ["own-tenant"] for d in decisions)
    version = enforcing.app.state.server.authorizer.version
    assert {d["policy_version"] for d in decisions} == {version}
    assert all(d["latency_us"] >= 0 for d in decisions)


def enforcing_dir(srv: BackgroundServer) -> Path:
    data_dir: Path = srv.app.state.server.data_dir
    return data_dir


def test_forbid_wins_over_the_permit(http: httpx.Client) -> None:
    r = complete(http, "blocked")
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["type"] == "permission_error" and err["code"] == "policy_denied"


def test_publishing_a_shared_prefix_is_a_decision(http: httpx.Client) -> None:
    assert complete(http, "solo").status_code == 200
    r = complete(http, "solo", aruntime={"shared_prefix_tokens": 16})
    assert r.status_code == 403 and "publish_shared_prefix" in r.json()["error"]["message"]
    assert complete(http, "team", aruntime={"shared_prefix_tokens": 16}).status_code == 200


def test_the_output_hook_withholds_what_the_policy_forbids(http: httpx.Client,
                                                           enforcing: BackgroundServer) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "mail?"}],
            "max_tokens": 40, "temperature": 0, "aruntime": {"tenant": "a"},
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "m", "schema": EMAIL_SCHEMA}}}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 403 and r.json()["error"]["code"] == "output_denied"
    assert "x@example.com" not in r.text and "email" in r.json()["error"]["message"]
    record = last_evidence(enforcing_dir(enforcing))
    hook = record["policy_decisions"][-1]
    assert hook["action"] == "check_output" and hook["reasons"] == ["no-emails-out"]
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        events = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "output_denied"


def test_runs_are_read_by_their_tenant_only(http: httpx.Client) -> None:
    started = http.post("/v1/runs", json={"flow": "agent_flows:ask_name", "tenant": "a"})
    assert started.status_code == 200, started.text
    run_id = started.json()["run_id"]
    mine = http.get("/v1/runs", params={"tenant": "a"}).json()["data"]
    theirs = http.get("/v1/runs", params={"tenant": "b"}).json()["data"]
    assert run_id in [r["run_id"] for r in mine] and theirs == []
    assert http.get(f"/v1/runs/{run_id}").status_code == 200  # anonymous acts in its tenant


def test_log_only_lets_the_request_on_and_records_the_denial(
        tmp_path: Path) -> None:
    for srv in serve(tmp_path, Mode.LOG_ONLY):
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert complete(c, "blocked").status_code == 200
        first = last_evidence(tmp_path)["policy_decisions"][0]
        assert (first["decision"], first["mode"]) == ("deny", "log-only")
        assert first["reasons"] == ["blocked-tenant"]


def test_a_refused_request_and_a_read_are_in_the_decision_log(http: httpx.Client,
                                                              enforcing: BackgroundServer
                                                              ) -> None:
    assert complete(http, "blocked").status_code == 403
    path = enforcing_dir(enforcing) / "decisions.jsonl"
    last = json.loads(path.read_text().splitlines()[-1])
    assert (last["via"], last["outcome"], last["tenant"]) == ("http", "refused", "blocked")
    assert last["decision"]["reasons"] == ["blocked-tenant"]
    run_id = http.post("/v1/runs", json={"flow": "agent_flows:ask_name",
                                         "tenant": "a"}).json()["run_id"]
    assert http.get(f"/v1/runs/{run_id}").status_code == 200
    read = json.loads(path.read_text().splitlines()[-1])
    assert read["decision"]["action"] == "read_evidence" and read["outcome"] == "allowed"
