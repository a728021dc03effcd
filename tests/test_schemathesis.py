"""schemathesis against the server's own `/openapi.json`, over a real socket: every operation,
bodies generated from the request models, valid and not. No response may be a 5xx, and every
error must be OpenAI's `{"error": {"message", "type", "param", "code"}}`.

Auth is on: the fuzzed requests carry a real API key (the `authorization` fixture), and
every operation but /health refuses a request without one (401, in the same shape).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from aruntime.engine.config import EngineConfig
from aruntime.policy.api_keys import KEYS_FILE, KeyAuth, KeyStore
from aruntime.serve import (
    confidential_routes,
    info_routes,
    openai_routes,
    releases_routes,
    runs_routes,
)
from aruntime.serve.console import routes as console_routes
from aruntime.serve.launch import BackgroundServer, background_server

MODEL = "tiny"
EXAMPLES = 20  # per operation and mode: 17 operations x 2 modes
MAX_TOKENS = 8  # generated budgets are capped: the check is of the answers, not of decoding
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def authorization(data_dir: Path) -> dict[str, str]:
    """A real API key of tenant `fuzz` (auth is on)."""
    key = KeyStore(data_dir / KEYS_FILE).create("fuzz", "schemathesis", ("user",))[1]
    return {"Authorization": f"Bearer {key.reveal()}"}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, data_dir: Path, authorization: dict[str, str]
           ) -> Iterator[BackgroundServer]:
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=2 * 1024 * 1024,
                          max_model_len=128)
    with background_server(config, data_dir, served_model_name=MODEL,
                           authenticator=KeyAuth(KeyStore(data_dir / KEYS_FILE))) as srv:
        yield srv


def openai_error_shape(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == ERROR_KEYS, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    assert all(error[k] is None or isinstance(error[k], str) for k in ("param", "code")), body


def _aimed(case: Any) -> None:
    """Most generated bodies name the served model (else all would stop at 404) with a small
    budget; a few keep what was generated."""
    body = case.body
    if not isinstance(body, dict) or "model" not in body:
        return
    if zlib.crc32(repr(body).encode()) % 8 == 0:  # deterministic: not Python's hash()
        return
    body["model"] = MODEL
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and body[key] > MAX_TOKENS:
            body[key] = MAX_TOKENS


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_and_every_error_in_openai_shape(server: BackgroundServer, mode: GenerationMode,
                                                authorization: dict[str, str]) -> None:
    """Each operation its own hypothesis run (schemathesis' pytest loader does not run under
    this pytest), a bounded, derandomized number of examples."""
    spec = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in spec.get_all_operations()]
    assert len(operations) >= 17
    failures: dict[str, str] = {}
    calls: list[str] = []
    for operation in operations:
        @given(operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        def check(case: Any) -> None:
            _aimed(case)
            response = case.call(headers=authorization, timeout=60)
            calls.append(f"{case.operation.label} {response.status_code}")
            case.validate_response(response, checks=[not_a_server_error, openai_error_shape])

        try:
            check()
        except Unsatisfiable:  # nothing to negate: no parameters, or strings only
            assert mode is GenerationMode.NEGATIVE
        except Exception as exc:  # every operation is tried; all failures are reported
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:2000]
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
    called = {c.rsplit(" ", 1)[0] for c in calls}
    assert len(called) >= (len(operations) if mode is GenerationMode.POSITIVE else 8)
    if mode is GenerationMode.POSITIVE:  # some bodies got past every check to a completion
        assert "POST /v1/completions 200" in calls, sorted(set(calls))
    assert not any(c.endswith(" 401") for c in calls)  # the credential was taken


def test_the_description_covers_every_route(server: BackgroundServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    routes = {(m, r.path_format) for router in (info_routes.router, openai_routes.router,
                                                runs_routes.router,
                                                confidential_routes.router,
                                                releases_routes.router,
                                                console_routes.router)
              for r in router.routes if isinstance(r, APIRoute) for m in r.methods}
    assert len(routes) >= 17
    described = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}
    assert described == routes
    for path in ("/v1/completions", "/v1/chat/completions"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert "model" in body["schema"]["properties"]
    assert "422" not in str(spec["paths"])  # FastAPI's 422 never reaches a client
    assert "ark_" not in str(spec) and "secret" not in str(spec).lower()


def test_every_operation_but_health_needs_the_credential(server: BackgroundServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()  # itself public
    for path, operations in spec["paths"].items():
        url = server.url + path.replace("{run_id}", "r1").replace("{seq}", "1").replace(
            "{model}", MODEL)
        for method in operations:
            r = httpx.request(method, url, json={})
            if path == "/health":
                assert r.status_code == 200
                continue
            assert r.status_code == 401, (method, path, r.text)
            openai_error_shape(None, r, None)
