"""The HTTP API with raw httpx against a real server: uvicorn on a loopback port, the engine core
in its own process. Checks exact response and error shapes, metrics and evidence."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis_server import free_port

from aruntime.engine.config import EngineConfig
from aruntime.evidence.log import verify
from aruntime.evidence.signing import load_public_key
from aruntime.serve.launch import BackgroundServer, background_server

KV_BYTES = 2 * 1024 * 1024
MAX_MODEL_LEN = 256
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def config(tiny_model_dir: Path) -> EngineConfig:
    return EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=KV_BYTES,
                        max_model_len=MAX_MODEL_LEN)


@pytest.fixture(scope="module")
def server(config: EngineConfig, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[BackgroundServer]:
    with background_server(config, tmp_path_factory.mktemp("data"),
                           served_model_name="tiny") as srv:
        yield srv


@pytest.fixture()
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def evidence_path(server: BackgroundServer) -> Path:
    return Path(server.server.config.app.state.server.data_dir) / "evidence.jsonl"


def evidence_lines(server: BackgroundServer) -> list[dict[str, Any]]:
    path = evidence_path(server)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# ---- happy paths ----------------------------------------------------------------------------


def test_health(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_models_card_says_demo(http: httpx.Client, server: BackgroundServer) -> None:
    body = http.get("/v1/models").json()
    assert body["object"] == "list" and len(body["data"]) == 1
    card = body["data"][0]
    assert card["id"] == "tiny" and card["object"] == "model" and card["owned_by"] == "aruntime"
    assert card["aruntime"]["demo"] is True
    assert "--model" in card["aruntime"]["note"] and "random" in card["aruntime"]["note"]
    assert card["aruntime"]["revision"].startswith("sha256:")
    assert http.get("/v1/models/tiny").json()["id"] == "tiny"
    assert http.get("/v1/models/other").status_code == 404


def test_completion_shape(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": "the sea and the sky",
                                           "max_tokens": 5, "temperature": 0, "ignore_eos": True,
                                           "some_future_field": {"ignored": True}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert isinstance(body["created"], int) and body["model"] == "tiny"
    (choice,) = body["choices"]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["text"]
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_chat_shape(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": [{"type": "text",
                                                                    "text": "hello"}]}],
        "max_completion_tokens": 4, "ignore_eos": True, "seed": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert body["usage"]["completion_tokens"] == 4


def test_seeded_requests_repeat(http: httpx.Client) -> None:
    body = {"model": "tiny", "prompt": "once upon", "max_tokens": 6, "seed": 42,
            "ignore_eos": True, "n": 2}
    a = http.post("/v1/completions", json=body).json()["choices"]
    b = http.post("/v1/completions", json=body).json()["choices"]
    assert [c["text"] for c in a] == [c["text"] for c in b]
    assert [c["index"] for c in a] == [0, 1]


def test_batch_prompts_and_token_ids(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": ["one", "two three"],
                                           "n": 2, "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2, 3]
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": [5, 6, 7],
                                           "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 3


def test_prefix_cache_hits_are_reported(http: httpx.Client) -> None:
    prompt = list(range(100, 164))  # four full blocks
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 2, "ignore_eos": True}
    http.post("/v1/completions", json=body).raise_for_status()
    usage = http.post("/v1/completions", json=body).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 48


def test_stream_completion_sse(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/completions", json={
            "model": "tiny", "prompt": "hi", "max_tokens": 4, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "length"
    assert all(c["usage"] is None for c in chunks[:-1])


# ---- errors ---------------------------------------------------------------------------------

COMPLETION = {"model": "tiny", "prompt": "hello"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
LONG_PROMPT = list(range(3, 3 + MAX_MODEL_LEN + 10))

BAD_REQUESTS = [
    ("/v1/completions", {**COMPLETION, "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "max_tokens": "5"}, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "max_tokens": MAX_MODEL_LEN}, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "temperature": 2.5}, "temperature"),
    ("/v1/completions", {**COMPLETION, "temperature": -0.1}, "temperature"),
    ("/v1/completions", {**COMPLETION, "temperature": "hot"}, "temperature"),
    ("/v1/completions", {**COMPLETION, "top_p": 0}, "top_p"),
    ("/v1/completions", {**COMPLETION, "top_p": 1.5}, "top_p"),
    ("/v1/completions", {**COMPLETION, "n": 0}, "n"),
    ("/v1/completions", {**COMPLETION, "n": 17}, "n"),
    ("/v1/completions", {**COMPLETION, "stream": "yes"}, "stream"),
    ("/v1/completions", {**COMPLETION, "stream_options": {"include_usage": True}},
     "stream_options"),
    ("/v1/completions", {**COMPLETION, "logprobs": 6}, "logprobs"),
    ("/v1/completions", {**COMPLETION, "stop": [""]}, "stop"),
    ("/v1/completions", {**COMPLETION, "stop_token_ids": [999999]}, "stop_token_ids"),
    ("/v1/completions", {"model": "tiny", "prompt": ""}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": []}, "prompt"),
    ("/v1/completions", {"model": "tiny"}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": [1, "a"]}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": [10 ** 9]}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": LONG_PROMPT}, "prompt"),
    ("/v1/completions", {"prompt": "x"}, "model"),
    ("/v1/completions", {**COMPLETION, "aruntime": {"tenant": "no spaces allowed"}},
     "aruntime.tenant"),
    ("/v1/completions", {**COMPLETION, "aruntime": {"kind": "agent_run"}}, "aruntime.kind"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": "hello"}, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard",
                                                             "content": "x"}]},
     "messages[0].role"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 0}, "max_completion_tokens"),
    ("/v1/chat/completions", {**CHAT, "n": 100}, "n"),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD_REQUESTS,
                         ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_input_is_400_in_openai_shape(http: httpx.Client, path: str, body: dict[str, Any],
                                          param: str) -> None:
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(r.json()) == {"error"} and set(error) == ERROR_KEYS
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_too_long_prompt_names_both_numbers(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": LONG_PROMPT})
    message = r.json()["error"]["message"]
    assert str(MAX_MODEL_LEN) in message and str(len(LONG_PROMPT)) in message


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"", "\"é\"".encode("latin-1")])
def test_malformed_body_is_400(http: httpx.Client, content: bytes) -> None:
    r = http.post("/v1/completions", content=content,
                  headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404(http: httpx.Client) -> None:
    for path, body in (("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)):
        r = http.post(path, json={**body, "model": "gpt-9"})
        assert r.status_code == 404
        assert r.json() == {"error": {"message": "The model 'gpt-9' does not exist",
                                      "type": "invalid_request_error", "param": "model",
                                      "code": "model_not_found"}}


def test_unknown_route_and_method(http: httpx.Client) -> None:
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and set(r.json()["error"]) == ERROR_KEYS
    r = http.get("/v1/completions")
    assert r.status_code == 405 and set(r.json()["error"]) == ERROR_KEYS


def test_never_422(http: httpx.Client) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        for body in ({}, {"model": 5}, {"model": "tiny", "n": None, "messages": None}):
            assert http.post(path, json=body).status_code in (400, 404)


# ---- metrics and evidence -------------------------------------------------------------------


def scrape(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(
                f"|{v}" for k, v in sorted(sample.labels.items()) if k == "finished_reason")
            if "le" not in sample.labels:
                out[key] = out.get(key, 0.0) + sample.value
    return out


def test_metrics_parse_and_move(http: httpx.Client) -> None:
    before = scrape(http)
    for name in ("aruntime:num_requests_running", "aruntime:num_requests_waiting",
                 "aruntime:kv_cache_usage_perc", "aruntime:prefix_cache_queries_total",
                 "aruntime:prefix_cache_hits_total", "aruntime:prompt_tokens_total",
                 "aruntime:generation_tokens_total", "aruntime:num_preemptions_total"):
        assert name in before, name
    http.post("/v1/completions", json={**COMPLETION, "max_tokens": 3,
                                       "ignore_eos": True}).raise_for_status()
    after = scrape(http)
    assert after["aruntime:generation_tokens_total"] - before[
        "aruntime:generation_tokens_total"] == 3
    assert after["aruntime:prompt_tokens_total"] > before["aruntime:prompt_tokens_total"]
    assert after["aruntime:request_success_total|length"] - before.get(
        "aruntime:request_success_total|length", 0) == 1
    assert after["aruntime:time_to_first_token_seconds_count"] - before.get(
        "aruntime:time_to_first_token_seconds_count", 0) == 1
    assert after["aruntime:e2e_request_latency_seconds_count"] - before.get(
        "aruntime:e2e_request_latency_seconds_count", 0) == 1
    assert after["aruntime:num_requests_running"] == 0


def test_evidence_one_record_per_request(http: httpx.Client, server: BackgroundServer) -> None:
    start = len(evidence_lines(server))
    r = http.post("/v1/completions", json={**COMPLETION, "max_tokens": 2, "n": 3,
                                           "aruntime": {"tenant": "acme",
                                                        "governance_tags": ["eu"]}})
    rid = r.json()["id"]
    with http.stream("POST", "/v1/chat/completions",
                     json={**CHAT, "max_tokens": 2, "stream": True}) as s:
        s.read()
    http.post("/v1/completions", json={**COMPLETION, "max_tokens": 0})  # refused: no record
    wait_for(lambda: len(evidence_lines(server)) >= start + 2)
    records = evidence_lines(server)
    assert len(records) == start + 2
    first = records[start]
    assert first["request_id"] == rid and first["tenant"] == "acme"
    assert first["schema"] == "aruntime.evidence/v1"
    assert first["model_revision"] == server.engine.model_info.revision  # type: ignore[union-attr]
    assert first["usage"]["completion_tokens"] == 6 and len(first["finish_reasons"]) == 3
    assert first["created_at"].endswith("Z") and first["timings"]["e2e_s"] >= 0
    assert 0 <= first["timings"]["queue_s"] <= first["timings"]["e2e_s"]
    assert first["output_digest"].startswith("hmac-sha256:")
    assert records[start + 1]["request_id"].startswith("chatcmpl-")
    # Signed with the deployment key the server serves, and whose public half it keeps on disk.
    key = http.get("/v1/evidence/key").json()
    assert key["object"] == "evidence.key" and key["alg"] == "Ed25519"
    assert key["head"] == records[-1]["hash"]
    assert all(r["signature"].startswith(key["key_id"] + ":") for r in records)
    public_file = evidence_path(server).parent / "keys" / "evidence-ed25519.pub.pem"
    assert public_file.read_text() == key["public_key_pem"]
    result = verify(evidence_path(server), load_public_key(key["public_key_pem"]),
                    require_signatures=True, anchor=key["head"])
    assert result.ok, result.errors
    assert result.signed == len(records) and result.key_id == key["key_id"]


# ---- a dead engine ---------------------------------------------------------------------------


def test_dead_engine_is_503_not_a_hang(config: EngineConfig, tmp_path: Path) -> None:
    with background_server(config, tmp_path) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        pid = srv.engine.registry["w0"].pid  # type: ignore[union-attr]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: http.get("/health").status_code == 503)
        r = http.post("/v1/completions", json={"model": srv.engine.model_info.name,  # type: ignore[union-attr]
                                               "prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and set(r.json()["error"]) == ERROR_KEYS


# ---- disconnects and the command line ------------------------------------------------------


def test_non_streaming_disconnect_aborts(http: httpx.Client, server: BackgroundServer) -> None:
    engine = server.engine
    assert engine is not None
    start = len(evidence_lines(server))
    body = json.dumps({"model": "tiny", "prompt": [7, 8, 9], "max_tokens": MAX_MODEL_LEN - 3,
                       "ignore_eos": True}).encode()
    sock = socket.create_connection((server.host, server.port), timeout=10)
    try:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                     b"application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: server.call(engine.stats()).num_running == 1)
    finally:
        sock.close()  # hang up while the engine is generating
    wait_for(lambda: len(evidence_lines(server)) == start + 1)
    assert evidence_lines(server)[-1]["finish_reasons"] == ["abort"]
    stats = server.call(engine.stats())
    assert stats.num_running == 0 and stats.num_free_blocks == stats.num_blocks


def test_cli_bad_model_dir_is_one_line_exit_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from aruntime.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    assert main(["serve", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("aruntime: error: --model") for line in err)
    assert "not a directory" in err[0] and "config.json" in err[1]


def test_aruntime_serve_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aruntime.cli", "serve", "--model", str(tiny_model_dir),
         "--port", str(port), "--kv-cache-bytes", str(KV_BYTES), "--max-model-len", "128",
         "--data-dir", str(tmp_path), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=60)
        r = httpx.post(f"{url}/v1/completions", timeout=30, json={
            "model": tiny_model_dir.name, "prompt": "hello", "max_tokens": 3})
        assert r.status_code == 200, r.text
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the engine core should run in its own process"
        _second_server_on_the_same_data_dir_stops_in_one_line(tiny_model_dir, tmp_path, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
    for child in children:
        wait_for(lambda c=child: not c.is_running() or c.status() == psutil.STATUS_ZOMBIE,
                 timeout=15)
    assert len((tmp_path / "evidence.jsonl").read_text().splitlines()) == 1
    assert (tmp_path / "keys" / "evidence-ed25519.pem").stat().st_mode & 0o777 == 0o600
    signed = verify(tmp_path / "evidence.jsonl",
                    load_public_key(tmp_path / "keys" / "evidence-ed25519.pub.pem"),
                    require_signatures=True)
    assert signed.ok and signed.signed == 1, signed.errors


def _second_server_on_the_same_data_dir_stops_in_one_line(model: Path, data_dir: Path,
                                                          holder: int) -> None:
    """Before it loads a model: exit 2, one line naming the directory, the process holding it
    and the flag to pick another."""
    second = subprocess.run(
        [sys.executable, "-m", "aruntime.cli", "serve", "--model", str(model),
         "--port", str(free_port()), "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr
    [line] = second.stderr.strip().splitlines()
    assert line.startswith("aruntime: error:") and str(data_dir) in line
    assert f"pid {holder}" in line and "--data-dir" in line


def test_tenants_do_not_share_cached_prefixes(http: httpx.Client) -> None:
    prompt = list(range(500, 560))  # several full blocks

    def cached(tenant: str) -> int:
        body = {**COMPLETION, "prompt": prompt, "max_tokens": 1, "aruntime": {"tenant": tenant}}
        r = http.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert cached("iso-a") == 0
    assert cached("iso-a") > 0  # the same tenant hits its own blocks
    assert cached("iso-b") == 0  # another tenant never does


def test_a_published_prefix_is_shared_across_tenants(http: httpx.Client) -> None:
    system = list(range(700, 732))  # whole blocks: the common prefix published on purpose

    def cached(tenant: str, tail: list[int]) -> int:
        body = {**COMPLETION, "prompt": system + tail, "max_tokens": 1,
                "aruntime": {"tenant": tenant, "shared_prefix_tokens": len(system)}}
        r = http.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert cached("pub-a", list(range(800, 840))) == 0
    assert cached("pub-b", list(range(800, 840))) == len(system)  # the shared part only
    bad = http.post("/v1/completions",
                    json={**COMPLETION, "aruntime": {"shared_prefix_tokens": -1}})
    assert (bad.status_code == 400
            and bad.json()["error"]["param"] == "aruntime.shared_prefix_tokens")


def test_idle_connections_outlive_the_clients_pool(server: BackgroundServer) -> None:
    """With equal idle timers a client may send on a connection just as the server closes it,
    and that request is lost (the openai client saw exactly this as a connection error)."""
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert server.server.config.timeout_keep_alive > 2 * client_expiry


def test_the_background_servers_connections_do_not_wait_for_delayed_acks(
        server: BackgroundServer) -> None:
    import socket

    assert server._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
