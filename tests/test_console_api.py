"""The console's JSON through a real server with API keys and a policy that keeps `admin` on
the console to the `operator` role: every figure comes from the running server (a request sent
here appears in the traffic window, its route in the cluster view, its decisions in the policy
view), a non-operator key is refused, the page and its assets load without a credential and
hold no data, and the server's evidence logs verify from the console."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from console_server import console_server, make_keys

from aruntime.serve.launch import BackgroundServer


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    data = tmp_path_factory.mktemp("console")
    return data, make_keys(data)


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, keys: tuple[Path, dict[str, str]]
           ) -> Iterator[BackgroundServer]:
    with console_server(tiny_model_dir, keys[0]) as srv:
        yield srv


def client(server: BackgroundServer, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def test_the_page_and_its_assets_load_without_a_credential_and_hold_no_data(
        server: BackgroundServer) -> None:
    with client(server, None) as c:
        page = c.get("/console")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert c.get("/console/assets/console.js").status_code == 200
        assert c.get("/console/assets/../app.py").status_code == 404
        assert c.get("/console/assets/secret.txt").status_code == 404
        assert c.get("/v1/console/cluster").status_code == 401


def test_a_non_operator_key_is_refused(server: BackgroundServer,
                                       keys: tuple[Path, dict[str, str]]) -> None:
    with client(server, keys[1]["user"]) as c:
        for path in ("/me", "/cluster", "/traffic", "/policy", "/claims"):
            got = c.get(f"/v1/console{path}")
            assert got.status_code == 403, path
            assert got.json()["error"]["code"] == "policy_denied"
        assert c.post("/v1/console/verify", json={"log": "requests"}).status_code == 403


def test_every_view_shows_what_the_server_did(server: BackgroundServer,
                                              keys: tuple[Path, dict[str, str]]) -> None:
    with client(server, keys[1]["user"]) as c:
        assert c.get("/v1/console/me").status_code == 403  # a denial the policy view counts
    with client(server, keys[1]["operator"]) as c:
        denied = c.get("/v1/console/policy").json()["denials_by_rule"]["console-for-operators"]
        assert c.get("/v1/console/me").json()["roles"] == ["operator"]
        answer = c.post("/v1/completions", json={"model": "tiny", "prompt": "console check",
                                                 "max_tokens": 5, "temperature": 0})
        assert answer.status_code == 200
        request_id = answer.json()["id"]
        traffic = c.get("/v1/console/traffic").json()
        mine = [r for r in traffic["requests"] if r["response_id"] == answer.json()["id"]]
        assert mine and mine[-1]["tokens"] == 5 and mine[-1]["ttft_s"] is not None
        assert mine[-1]["model"] == "tiny" and mine[-1]["e2e_s"] >= mine[-1]["ttft_s"]
        assert c.get("/v1/console/traffic", params={"since": traffic["now"]}).json()[
            "requests"] == []
        cluster = c.get("/v1/console/cluster").json()
        assert [w["worker_id"] for w in cluster["workers"]] == ["w0", "w1"]
        assert all(w["alive"] and w["role"] == "colocated" and w["placement"] == "local"
                   and w["engine"]["device_blocks"] > 0 for w in cluster["workers"])
        assert cluster["routes"] and cluster["routes"][-1]["cached_tokens_used"] is not None
        policy = c.get("/v1/console/policy").json()
        assert policy["version"] == server.app.state.server.authorizer.version
        assert any(d["action"] == "invoke_model" and d["principal"] == "olga"
                   for d in policy["decisions"])
        assert {d["via"] for d in policy["decisions"] if d["action"] == "admin"} == {"console"}
        assert policy["denials_by_rule"]["console-for-operators"] == denied  # none since
        assert any(d["decision"] == "deny" and d["principal"] == "ursula"
                   for d in policy["decisions"])
        claims = c.get("/v1/console/claims").json()
        assert claims["error"] is None and claims["claims"]
        verified = c.post("/v1/console/verify", json={"log": "requests"}).json()
        assert verified["ok"] and verified["records"] >= 1, verified
        assert c.post("/v1/console/verify", json={"log": "other"}).status_code == 400
    assert request_id.startswith("cmpl")


def test_a_corrupt_claim_file_is_reported_not_raised(tmp_path: Path) -> None:
    from aruntime.serve.console.views import claims
    from aruntime.timeutil import utc_now

    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "broken.json").write_text("{not json")
    got = claims(tmp_path, utc_now())
    assert got["claims"] == [] and "broken.json" in got["error"]
    assert claims(tmp_path / "none", utc_now()) == {
        "root": str(tmp_path / "none"), "claims": [], "due": [], "error": None}
