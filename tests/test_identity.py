"""Identity through a real server with `--auth keys`: no key, a wrong key or a revoked one is a
401 in OpenAI's shape; the tenant is the key's (a body naming another is a 403); one tenant's key
never reaches another's cached prefix; keys are stored hashed and never logged."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model
from aruntime.policy.api_keys import KEYS_FILE, KeyAuth, KeyStore
from aruntime.serve.launch import BackgroundServer, background_server

PROMPT = " ".join(f"word{i}" for i in range(120))  # several KV blocks


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    data = tmp_path_factory.mktemp("identity")
    store = KeyStore(data / KEYS_FILE)
    made = {who: store.create(tenant, who, roles)[1].reveal()
            for who, tenant, roles in (("alice", "a", ("user",)), ("bob", "b", ()),
                                       ("carol", "a", ()))}
    store.revoke(store.check(made["carol"]).key_id)
    return data, made


@pytest.fixture(scope="module")
def server(keys: tuple[Path, dict[str, str]]) -> Iterator[BackgroundServer]:
    data, _ = keys
    config = EngineConfig(model=str(resolve_model("demo")), max_model_len=512,
                          kv_cache_bytes=16 * 1024 * 1024)
    with background_server(config, data, served_model_name="tiny",
                           authenticator=KeyAuth(KeyStore(data / KEYS_FILE))) as srv:
        yield srv


@pytest.fixture
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def complete(http: httpx.Client, key: str | None, **aruntime: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return http.post("/v1/completions", headers=headers, json={
        "model": "tiny", "prompt": PROMPT, "max_tokens": 2, "temperature": 0,
        **({"aruntime": aruntime} if aruntime else {})})


@pytest.mark.parametrize("who", [None, "wrong", "carol"])
def test_no_key_a_wrong_key_or_a_revoked_key_is_a_401(http: httpx.Client, who: str | None,
                                                     keys: tuple[Path, dict[str, str]]) -> None:
    key = {None: None, "wrong": "ark_0123456789abcdef_" + "x" * 43}.get(who, keys[1].get(who or ""))
    r = complete(http, key)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    error = r.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    if key:
        assert key not in r.text
    for path in ("/v1/models", "/v1/runs", "/metrics", "/v1/evidence/key"):
        assert http.get(path).status_code == 401, path
    mcp = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={"Authorization": f"Bearer {key}"} if key else {})
    assert mcp.status_code == 401 and mcp.json()["error"]["type"] == "authentication_error"
    assert http.get("/health").status_code == 200  # liveness stays open


def test_the_tenant_is_the_keys(http: httpx.Client, keys: tuple[Path, dict[str, str]]) -> None:
    alice = keys[1]["alice"]
    r = complete(http, alice, tenant="b")
    assert r.status_code == 403 and r.json()["error"]["code"] == "tenant_mismatch"
    assert complete(http, alice, tenant="a").status_code == 200  # repeating it is fine


def test_another_tenants_key_never_hits_a_cached_prefix(
        http: httpx.Client, keys: tuple[Path, dict[str, str]]) -> None:
    alice, bob = keys[1]["alice"], keys[1]["bob"]
    cached = [complete(http, k).json()["usage"]["prompt_tokens_details"]["cached_tokens"]
              for k in (alice, alice, bob)]
    assert cached[1] > 0, "alice's own repeat hits her cache"
    assert cached[2] == 0, "bob's key never reaches alice's blocks"


def test_keys_are_stored_hashed_and_never_logged(
        http: httpx.Client, keys: tuple[Path, dict[str, str]],
        caplog: pytest.LogCaptureFixture) -> None:
    data, made = keys
    with caplog.at_level(logging.DEBUG):
        for key in made.values():
            complete(http, key)
            complete(http, key + "x")
    stored = b"".join(p.read_bytes() for p in data.glob(f"{KEYS_FILE}*"))
    for key in made.values():
        secret = key.split("_", 2)[2]
        assert secret.encode() not in stored
        assert secret not in caplog.text
    assert "ark_…" in repr(KeyStore(data / KEYS_FILE).create("a", "dave")[1])


def test_serving_off_loopback_without_auth_is_refused_at_start(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "aruntime.cli", "serve", "--host", "0.0.0.0",
                          "--model", "demo", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--auth keys" in lines[0], run.stderr
    assert not (tmp_path / "serve.lock").exists()  # refused before anything was claimed


def test_keys_cli_round_trip(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aruntime.cli", "keys", *args,
                               "--data-dir", str(tmp_path)], capture_output=True, text=True,
                              timeout=60)

    made = cli("create", "--tenant", "t1", "--principal", "eve", "--role", "admin")
    assert made.returncode == 0
    key = made.stdout.strip().splitlines()[-1]
    key_id = key.split("_")[1]
    listed = cli("list").stdout
    assert key_id in listed and "eve" in listed and key.split("_", 2)[2] not in listed
    assert cli("revoke", key_id).returncode == 0
    again = cli("revoke", key_id)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    bad = cli("create", "--tenant", "no spaces", "--principal", "x")
    assert bad.returncode == 2 and "tenant" in bad.stderr
