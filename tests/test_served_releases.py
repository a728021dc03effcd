"""The server's own releases through a real server (engine core processes, HTTP on a socket):
`serve --release policy=NAME` decides every request by the Cedar bundle its rollout assigns, so a
candidate that refuses more is aborted on its refusal rate, a shadow candidate is decided and
never enforced, and a promotion moves the policy in force; `--release route=NAME` places every
request by the router policy its rollout assigns; a version changed after `release add` never
decides or routes anything; each request's evidence names the versions that served it."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tiny_engine import config

from aruntime.adapt.artifact import Kind
from aruntime.adapt.controller import RolloutController
from aruntime.adapt.registry import Registry
from aruntime.cli import main
from aruntime.durable.journal import open_journal
from aruntime.evidence.signing import DeploymentKey, default_key_path
from aruntime.serve.launch import BackgroundServer, background_server
from aruntime.serve.released_policy import ReleasedPolicy

OWN_TENANT = ('@id("own-tenant")\npermit (principal, action, resource)\n'
              'when { context.tenant == principal.tenant };\n')
CLOSED = OWN_TENANT + ('@id("closed")\nforbid (principal, '
                       'action == ARuntime::Action::"invoke_model", resource);\n')


def add(data: Path, kind: Kind, name: str, path: Path, stable: bool = False) -> str:
    """A release added on the server's journal, as `aruntime release add` does."""
    journal = open_journal(data / "runs.db")
    try:
        registry = Registry(journal, data / "releases",
                            DeploymentKey.load_or_create(default_key_path(data)))
        version = registry.add(kind, name, path, by="test").version
        if stable:
            registry.move_alias(name, version, "stable", "test")
        return version
    finally:
        journal.close()


def bundle(root: Path, text: str) -> Path:
    root.mkdir(parents=True)
    (root / "policy.cedar").write_text(text)
    return root


def route(path: Path, policy: str, **weights: float) -> Path:
    path.write_text(json.dumps({"policy": policy, "weights": weights}))
    return path


def chat(http: httpx.Client, session: str, content: str = "Say hi.") -> httpx.Response:
    return http.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": content}],
        "max_tokens": 4, "temperature": 0, "aruntime": {"session": session}})


def controller(server: BackgroundServer) -> RolloutController:
    c: RolloutController = server.app.state.server.adaptation
    return c


def evidence(server: BackgroundServer) -> list[dict[str, Any]]:
    path = Path(server.app.state.server.data_dir) / "evidence.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def rollout(http: httpx.Client, name: str, to: str, **options: Any) -> str:
    r = http.post("/v1/rollouts", json={"name": name, "to": to, **options})
    assert r.status_code == 200, r.text
    rid: str = r.json()["rollout_id"]
    return rid


def status(http: httpx.Client, rid: str) -> dict[str, Any]:
    body: dict[str, Any] = http.get(f"/v1/rollouts/{rid}").json()
    return body


@pytest.fixture(scope="module")
def policy_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[BackgroundServer, dict[str, str]]]:
    root = tmp_path_factory.mktemp("served-policy")
    data = root / "data"
    versions = {
        "open": add(data, Kind.POLICY, "guard", bundle(root / "open", OWN_TENANT), stable=True),
        "closed": add(data, Kind.POLICY, "guard", bundle(root / "closed", CLOSED)),
        "same": add(data, Kind.POLICY, "guard",
                    bundle(root / "same", "// the same rule, reworded\n" + OWN_TENANT)),
    }
    cfg = dataclasses.replace(config(tiny_model_dir), max_model_len=256)
    with background_server(cfg, data, served_model_name="tiny",
                           authorizer=ReleasedPolicy("guard")) as srv:
        yield srv, versions


def test_a_candidate_policy_that_refuses_more_is_aborted_on_its_refusal_rate(
        policy_server: tuple[BackgroundServer, dict[str, str]]) -> None:
    server, v = policy_server
    with httpx.Client(base_url=server.url, timeout=60) as http:
        rid = rollout(http, "guard", v["closed"], steps=[50, 100])
        # 100 at 50%: the candidate's window of 20 is all but certain (P(fewer) < 1e-9)
        codes = [chat(http, f"refuse-{i}").status_code for i in range(100)]
        assert set(codes) == {200, 403}  # the candidate's share is refused, stable's is not
        controller(server).tick()
        body = status(http, rid)
        assert body["status"] == "aborted", body
        assert any("refusal-rate" in reason for reason in body["reasons"]), body["reasons"]
        assert all(chat(http, f"refuse-{i}").status_code == 200 for i in range(50))
        served = evidence(server)[-1]["releases"]
        assert served["policy"] == f"guard@{v['open']}"


def test_a_shadow_policy_is_decided_beside_and_never_enforced(
        policy_server: tuple[BackgroundServer, dict[str, str]]) -> None:
    server, v = policy_server
    with httpx.Client(base_url=server.url, timeout=60) as http:
        rid = rollout(http, "guard", v["closed"], steps=[100], shadow=True)
        assert all(chat(http, f"shadow-{i}").status_code == 200 for i in range(30))
        controller(server).tick()
        body = status(http, rid)
        assert body["status"] == "aborted", body  # what it would have refused is its sample
        assert any("refusal-rate" in reason for reason in body["reasons"]), body["reasons"]


def test_a_promoted_policy_decides_the_next_request(
        policy_server: tuple[BackgroundServer, dict[str, str]]) -> None:
    server, v = policy_server
    with httpx.Client(base_url=server.url, timeout=60) as http:
        rid = rollout(http, "guard", v["same"], steps=[50])  # both arms give samples
        assert all(chat(http, f"same-{i}").status_code == 200 for i in range(100))
        controller(server).tick()
        body = status(http, rid)
        assert body["status"] == "awaiting-approval", body  # a policy's always waits
        r = http.post(f"/v1/rollouts/{rid}/approve", json={"approves": body["digest"]})
        assert r.status_code == 200, r.text
        assert chat(http, "after").status_code == 200
        assert evidence(server)[-1]["releases"]["policy"] == f"guard@{v['same']}"
        assert server.app.state.server.authorizer.stable() == v["same"]


def test_a_policy_version_changed_after_add_never_decides(
        policy_server: tuple[BackgroundServer, dict[str, str]], tmp_path: Path) -> None:
    server = policy_server[0]
    data = Path(server.app.state.server.data_dir)
    tampered = add(data, Kind.POLICY, "guard", bundle(tmp_path / "t", OWN_TENANT + "// v4\n"))
    stored = data / "releases" / tampered.replace(":", "-") / "policy.cedar"
    with httpx.Client(base_url=server.url, timeout=60) as http:
        rid = rollout(http, "guard", tampered, steps=[100])  # checked here, and again to serve
        stored.chmod(0o644)
        stored.write_text(CLOSED.replace("forbid", "permit"))
        r = chat(http, "tampered")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "release_unavailable"
        assert "changed since it was added" in r.json()["error"]["message"]
        assert http.post(f"/v1/rollouts/{rid}/abort", json={}).status_code == 200
        assert chat(http, "tampered").status_code == 200


@pytest.fixture(scope="module")
def route_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[BackgroundServer, dict[str, str]]]:
    root = tmp_path_factory.mktemp("served-route")
    data = root / "data"
    versions = {
        "rr": add(data, Kind.ROUTE, "placement", route(root / "rr.json", "round-robin"),
                  stable=True),
        "least": add(data, Kind.ROUTE, "placement",
                     route(root / "least.json", "least-loaded", decode=8)),
    }
    cfg = dataclasses.replace(config(tiny_model_dir), max_model_len=256)
    with background_server(cfg, data, served_model_name="tiny", workers=2,
                           route_release="placement") as srv:
        yield srv, versions


def workers_of(server: BackgroundServer, n: int) -> list[str]:
    return [str(e["route"]["worker"]) for e in evidence(server)[-n:]]


def test_a_route_release_places_every_request_and_a_rollout_moves_it(
        route_server: tuple[BackgroundServer, dict[str, str]]) -> None:
    server, v = route_server
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for i in range(4):
            assert chat(http, f"rr-{i}").status_code == 200
        assert len(set(workers_of(server, 4))) == 2  # round-robin alternates
        assert evidence(server)[-1]["releases"]["route"] == f"placement@{v['rr']}"
        rid = rollout(http, "placement", v["least"], steps=[100], analysis={"metrics": []})
        for i in range(4):  # one at a time: every worker idle, the first of them wins
            assert chat(http, f"least-{i}").status_code == 200
        assert set(workers_of(server, 4)) == {"w0"}
        assert evidence(server)[-1]["releases"]["route"] == f"placement@{v['least']}"
        assert http.post(f"/v1/rollouts/{rid}/abort", json={}).status_code == 200
        for i in range(4):
            assert chat(http, f"back-{i}").status_code == 200
        assert len(set(workers_of(server, 4))) == 2


@pytest.mark.parametrize("flags, says", [
    (["--release", "policy"], "give KIND=NAME"),
    (["--release", "prompt=p"], "give KIND=NAME"),
    (["--release", "policy=nope"], "no policy release named 'nope'"),
    (["--release", "route=nope"], "no route release named 'nope'"),
    (["--release", "policy=a", "--policy", "x.cedar"], "drop --policy PATH"),
])
def test_serve_refuses_a_release_it_cannot_serve_in_one_line(
        flags: list[str], says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert "ARUNTIME_JOURNAL" not in os.environ
    assert main(["serve", "--model", "demo", "--data-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
