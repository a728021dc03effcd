"""Hostile input against a real server (uvicorn on a loopback port, the engine core in its own
process): bodies too deep, too large (by Content-Length and chunked), not JSON, numbers no float
holds, prompts whose bytes alone prove them too long, heads too large; and, while a 64 MiB body
and a prompt of a million tokens are in flight, /health and a short completion still answered.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import raw_http
from raw_http import MiB, head, read_response, stream_chunked

from aruntime.engine.config import EngineConfig
from aruntime.serve.launch import BackgroundServer, background_server
from aruntime.serve.limits import DEFAULT_MAX_BODY_BYTES, MAX_JSON_DEPTH
from aruntime.serve.prompt_bound import MAX_CHOICES

MAX_MODEL_LEN = 256
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[BackgroundServer]:
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=2 * MiB,
                          max_model_len=MAX_MODEL_LEN)
    with background_server(config, tmp_path_factory.mktemp("data"),
                           served_model_name="tiny") as srv:
        yield srv


@pytest.fixture()
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60,
                      headers={"content-type": "application/json"}) as client:
        yield client


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["type"]
    err: dict[str, Any] = body["error"]
    return err


def connect(server: BackgroundServer) -> socket.socket:
    return raw_http.connect(server.host, server.port)


# ---- one request at a time --------------------------------------------------------------------


def test_json_nested_50000_deep_is_400(http: httpx.Client) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    for path in ("/v1/completions", "/v1/runs"):
        err = error_of(http.post(path, content=f'{{"model":"tiny","prompt":{deep}}}'), 400)
        assert err["code"] == "json_too_complex" and str(MAX_JSON_DEPTH) in err["message"]
    # brackets in strings are text, and the limit is the limit
    ok = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    r = http.post("/v1/completions", content=f'{{"model":"tiny","prompt":{ok},"x":"[[[[[["}}')
    assert error_of(r, 400)["param"] == "prompt"  # past the depth check: a wrong prompt shape
    assert http.get("/health").status_code == 200


def test_seed_of_2_to_70_is_400(http: httpx.Client) -> None:
    r = http.post("/v1/completions", content=b'{"model":"tiny","prompt":"hi","seed":%d}' % 2**70)
    assert error_of(r, 400)["param"] == "seed"


@pytest.mark.parametrize(("name", "body"), [
    ("invalid UTF-8", b'{"model":"tiny","prompt":"\xff\xfe"}'),
    ("NaN", b'{"model":"tiny","prompt":"hi","temperature":NaN}'),
    ("Infinity in an open field", b'{"model":"tiny","prompt":"hi","stop":[-Infinity]}'),
    ("a float too large", b'{"model":"tiny","prompt":"hi","response_format":{"x":1e400}}'),
    ("a 5000-digit integer", b'{"model":"tiny","prompt":"hi","max_tokens":' + b"9" * 5000 + b"}"),
    ("a lone surrogate", b'{"model":"tiny","prompt":"\\ud800 hi"}'),
    ("not JSON", b"model=tiny&prompt=hi"),
    ("empty", b""),
    ("not an object", b'["model","tiny"]'),
])
def test_bad_bodies_are_400(http: httpx.Client, name: str, body: bytes) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        error_of(http.post(path, content=body), 400)


def test_surrogate_pairs_and_duplicate_keys_are_taken(http: httpx.Client) -> None:
    r = http.post("/v1/completions", content=b'{"model":"tiny","prompt":"\\ud83d\\ude00",'
                                              b'"max_tokens":9,"max_tokens":1}')
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 1  # the last of a duplicated key wins


@pytest.mark.parametrize("params", [{"top_p": 5e-324}, {"temperature": 5e-324},
                                    {"temperature": 1e-40, "top_p": 0.5, "top_k": 3}])
def test_vanishing_sampling_parameters_leave_the_best_token(http: httpx.Client,
                                                            params: dict[str, Any]) -> None:
    """Values a float32 rounds to 0 (found by schemathesis: the engine core died of a nan)."""
    body = {"model": "tiny", "prompt": "the sea", "max_tokens": 4, "ignore_eos": True}
    r = http.post("/v1/completions", json={**body, **params})
    assert r.status_code == 200, r.text
    greedy = http.post("/v1/completions", json={**body, "temperature": 0}).json()
    assert r.json()["choices"][0]["text"] == greedy["choices"][0]["text"]


def test_a_vanishing_repetition_penalty_is_sampled(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": "the sea the sea",
                                           "max_tokens": 4, "repetition_penalty": 5e-324})
    assert r.status_code == 200, r.text
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("body", [
    b'{"flow":"agent_flows:ask_name","input":1e400}',
    b'{"flow":"agent_flows:ask_name","subject":"\\udc00"}',
    b'{"flow":".agent_flows:ask_name"}',
    b'{"flow":"agent_flows:ask_name; rm -rf /"}',
    b'{"flow":"agent_flows:ask_name","input":NaN}',
])
def test_runs_refuse_bad_bodies(http: httpx.Client, body: bytes) -> None:
    error_of(http.post("/v1/runs", content=body), 400)


def test_a_call_number_past_the_journal_is_400(http: httpx.Client) -> None:
    r = http.post("/v1/runs", json={"flow": "agent_flows:ask_name", "run_id": "hostile-1"})
    assert r.status_code == 200, r.text
    r = http.post(f"/v1/runs/hostile-1/calls/{2**70}/respond", json={"answer": {"name": "x"}})
    assert error_of(r, 400)["param"] == "path.seq"


def test_body_over_the_limit_by_content_length_is_413(server: BackgroundServer) -> None:
    with connect(server) as sock:  # not a byte of the body is sent: the head is enough
        sock.sendall(head("/v1/completions", f"Content-Length: {64 * MiB}"))
        status, body = read_response(sock)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert str(DEFAULT_MAX_BODY_BYTES) in body["error"]["message"]


def test_chunked_body_over_the_limit_is_413_while_it_streams(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(head("/v1/completions", "Transfer-Encoding: chunked"))
        sent = stream_chunked(sock, b'{"model":"tiny","prompt":"', 64 * MiB)
        status, body = read_response(sock)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert sent < 64 * MiB  # refused mid-stream: the server did not wait for (or keep) it all


def test_prompt_whose_bytes_prove_it_too_long_is_400_untokenized(http: httpx.Client) -> None:
    text = "the sea " * (MAX_MODEL_LEN * 64)
    for path, body in (("/v1/completions", {"prompt": text}),
                       ("/v1/completions", {"prompt": ["short", text]}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": text}]})):
        err = error_of(http.post(path, json={"model": "tiny", **body}), 400)
        assert err["code"] == "context_length_exceeded"
        assert "at least" in err["message"]  # counted from the bytes: no token count exists
    # just over the context by tokens, but not provably by bytes: tokenized, then refused
    err = error_of(http.post("/v1/completions", json={"model": "tiny",
                                                      "prompt": "a" + " a" * MAX_MODEL_LEN}), 400)
    assert err["code"] == "context_length_exceeded" and "at least" not in err["message"]


def test_a_batch_past_the_fan_out_limit_is_400(http: httpx.Client) -> None:
    body = {"model": "tiny", "prompt": ["a"] * (MAX_CHOICES // 16 + 1), "n": 16, "max_tokens": 1}
    assert "at most" in error_of(http.post("/v1/completions", json=body), 400)["message"]
    body["prompt"] = ["a"] * (MAX_CHOICES // 16)
    assert http.post("/v1/completions", json=body).status_code == 200


def test_a_head_over_the_limit_is_refused_before_the_app(server: BackgroundServer) -> None:
    url = f"{server.url}/health"
    assert httpx.get(url, headers={"x-big": "j" * 20_000}).status_code == 200  # JWT-sized
    err = error_of(httpx.get(url, headers={"x-big": "j" * 40_000}), 431)
    assert err["code"] == "headers_too_large"
    with connect(server) as sock:  # nor is a head still arriving buffered past the limit
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nx-big: " + b"j" * 40_000)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ")  # uvicorn's own answer: it never reached the app


# ---- large requests in flight do not hold up small ones ----------------------------------------


def test_health_and_a_short_completion_while_large_requests_are_in_flight(
        server: BackgroundServer) -> None:
    """Client 1 streams a 64 MiB body, client 2 a prompt of a million tokens; each stops short
    of its end until client 3's /health and completion are answered, then finishes."""
    short_done = threading.Event()
    in_flight = [threading.Event(), threading.Event()]
    finished: list[str] = []
    results: dict[str, Any] = {}

    def big_body() -> None:
        with connect(server) as sock:
            sock.sendall(head("/v1/completions", "Transfer-Encoding: chunked"))
            sent = stream_chunked(sock, b'{"model":"tiny","prompt":"', 64 * MiB,
                                  8 * MiB, in_flight[0], short_done)
            results["big_body"] = (*read_response(sock), sent)
        finished.append("big_body")

    def million_tokens() -> None:
        body = json.dumps({"model": "tiny", "prompt": "a" + " a" * 999_999}).encode()
        with connect(server) as sock:
            sock.sendall(head("/v1/completions", f"Content-Length: {len(body)}") + body[:-1])
            in_flight[1].set()
            short_done.wait(60)
            sock.sendall(body[-1:])
            results["million_tokens"] = read_response(sock)
        finished.append("million_tokens")

    threads = [threading.Thread(target=big_body), threading.Thread(target=million_tokens)]
    for t in threads:
        t.start()
    try:
        for e in in_flight:
            assert e.wait(60)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.get("/health").status_code == 200
            r = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi",
                                                      "max_tokens": 2, "ignore_eos": True})
            assert r.status_code == 200, r.text
        finished.append("short")
    finally:
        short_done.set()
        for t in threads:
            t.join(60)
    assert finished[0] == "short" and sorted(finished[1:]) == ["big_body", "million_tokens"]
    status, body, sent = results["big_body"]
    assert status == 413 and sent < 64 * MiB
    status, body = results["million_tokens"]
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


def test_serve_refuses_a_body_limit_under_one_byte(tiny_model_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from aruntime.cli import main

    assert main(["serve", "--model", str(tiny_model_dir), "--max-body-bytes", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "aruntime: error: --max-body-bytes 0: must be at least 1")
