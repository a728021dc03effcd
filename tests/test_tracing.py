"""Traces in OpenTelemetry's GenAI conventions, against a real server (uvicorn on loopback, the
engine core in its own process, the tiny checkpoint): the SDK's in-memory exporter sees each
request's span, its attributes and its engine phases, the caller's traceparent as its parent,
and a run's agent and tool spans; the request evidence keeps the trace id. One export goes over
OTLP/HTTP to a receiver on a real socket here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis_server import free_port

from aruntime import telemetry
from aruntime.agents.flow import FlowContext, flow
from aruntime.agents.tools import tool
from aruntime.cluster.factory import open_pool
from aruntime.engine.config import EngineConfig
from aruntime.engine.tokenizer import Tokenizer
from aruntime.errors import UsageError
from aruntime.serve.app import build_app
from aruntime.serve.launch import BackgroundServer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SRC = Path(__file__).resolve().parents[1] / "src"


class Ended(SpanProcessor):
    """Lets a test wait, on an event, for a span of a given name to end."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.names: list[str] = []

    def on_end(self, span: ReadableSpan) -> None:
        with self.cond:
            self.names.append(span.name)
            self.cond.notify_all()

    def wait(self, name: str, timeout: float = 30.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: name in self.names, timeout), name


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def ended() -> Ended:
    return Ended()


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
           exporter: InMemorySpanExporter, ended: Ended) -> Iterator[BackgroundServer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(ended)
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=2 * 1024 * 1024,
                          max_model_len=256)
    pool = open_pool(config, 1, "kv")
    info = pool.start()
    try:
        app = build_app(pool, Tokenizer.from_dir(tiny_model_dir), "tiny", model_info=info,
                        data_dir=tmp_path_factory.mktemp("data"), owns_client=True,
                        tracer=telemetry.tracer_of(provider))
        with BackgroundServer(app) as srv:
            yield srv
    finally:
        pool.close()
        provider.shutdown()


@pytest.fixture()
def http(server: BackgroundServer, exporter: InMemorySpanExporter,
         ended: Ended) -> Iterator[httpx.Client]:
    exporter.clear()
    ended.names.clear()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    kids = [s for s in exporter.get_finished_spans()
            if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return sorted(kids, key=lambda s: (s.start_time or 0, s.name != "queue"))


def last_evidence(server: BackgroundServer) -> dict[str, Any]:
    path = Path(server.server.config.app.state.server.data_dir) / "evidence.jsonl"
    record: dict[str, Any] = json.loads(path.read_text().splitlines()[-1])
    return record


def hex_id(value: int, digits: int = 32) -> str:
    return f"{value:0{digits}x}"


def check_phases(exporter: InMemorySpanExporter, span: ReadableSpan) -> list[ReadableSpan]:
    """queue, prefill, decode in order, back to back, within the request's span."""
    kids = children(exporter, span)
    assert [k.name for k in kids] == ["queue", "prefill", "decode"]
    assert all(k.kind is SpanKind.INTERNAL for k in kids)
    assert kids[0].end_time == kids[1].start_time and kids[1].end_time == kids[2].start_time
    assert (span.start_time or 0) <= (kids[0].start_time or -1)
    assert (kids[2].end_time or 0) <= (span.end_time or -1)
    return kids


# ---- request spans ------------------------------------------------------------------------


def test_a_chat_request_span_has_the_callers_parent_its_attributes_and_its_phases(
        http: httpx.Client, server: BackgroundServer, exporter: InMemorySpanExporter) -> None:
    r = http.post("/v1/chat/completions", headers={"traceparent": TRACEPARENT}, json={
        "model": "tiny", "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 5, "temperature": 0.0, "seed": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    [span] = spans(exporter, "chat tiny")
    assert span.kind is SpanKind.SERVER
    assert hex_id(span.context.trace_id) == TRACE_ID
    assert span.parent is not None and hex_id(span.parent.span_id, 16) == PARENT_ID
    assert span.parent.is_remote
    a = dict(span.attributes or {})
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "aruntime"
    assert a["gen_ai.request.model"] == "tiny" and a["gen_ai.response.model"] == "tiny"
    assert (a["gen_ai.request.max_tokens"], a["gen_ai.request.temperature"],
            a["gen_ai.request.seed"], a["gen_ai.request.stream"]) == (5, 0.0, 7, False)
    assert a["gen_ai.response.id"] == body["id"]
    assert a["gen_ai.response.finish_reasons"] == (body["choices"][0]["finish_reason"],)
    assert a["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"]
    assert (a["server.address"], a["server.port"]) == ("127.0.0.1", server.port)
    assert span.status.status_code is StatusCode.UNSET
    check_phases(exporter, span)
    record = last_evidence(server)
    assert record["request_id"] == body["id"] and record["trace_id"] == TRACE_ID


def test_a_streamed_request_with_n_choices_ends_its_span_with_the_stream(
        http: httpx.Client, server: BackgroundServer, exporter: InMemorySpanExporter) -> None:
    with http.stream("POST", "/v1/completions", json={
            "model": "tiny", "prompt": "Once upon a time", "max_tokens": 4, "n": 2,
            "temperature": 0.0, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    [span] = spans(exporter, "text_completion tiny")
    a = dict(span.attributes or {})
    assert a["gen_ai.operation.name"] == "text_completion" and a["gen_ai.request.stream"]
    assert a["gen_ai.request.choice.count"] == 2 and a["gen_ai.usage.output_tokens"] == 8
    assert span.parent is None  # no caller's trace: the server started one
    kids = children(exporter, span)
    assert len(kids) == 6
    for index in (0, 1):
        mine = [k for k in kids if (k.attributes or {})["aruntime.choice.index"] == index]
        assert [k.name for k in mine] == ["queue", "prefill", "decode"]
    assert last_evidence(server)["trace_id"] == hex_id(span.context.trace_id)


def test_a_stream_the_client_leaves_ends_its_span_as_aborted(
        http: httpx.Client, exporter: InMemorySpanExporter, ended: Ended) -> None:
    with http.stream("POST", "/v1/completions", json={
            "model": "tiny", "prompt": "Tell me everything", "max_tokens": 200,
            "ignore_eos": True, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                break  # a token seen: leave
    ended.wait("text_completion tiny")
    [span] = spans(exporter, "text_completion tiny")
    a = dict(span.attributes or {})
    assert a["gen_ai.response.finish_reasons"] == ("abort",)
    assert a["gen_ai.usage.output_tokens"] < 200


def test_the_bodys_trace_context_is_the_parent_when_no_header_names_one(
        http: httpx.Client, server: BackgroundServer, exporter: InMemorySpanExporter) -> None:
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2,
                                           "aruntime": {"trace_context": TRACEPARENT}})
    assert r.status_code == 200, r.text
    [span] = spans(exporter, "text_completion tiny")
    assert span.parent is not None and hex_id(span.parent.span_id, 16) == PARENT_ID
    assert last_evidence(server)["trace_id"] == TRACE_ID


def test_a_refused_request_ends_its_span_failed_with_the_error_type(
        http: httpx.Client, exporter: InMemorySpanExporter) -> None:
    r = http.post("/v1/completions", headers={"traceparent": TRACEPARENT}, json={
        "model": "tiny", "prompt": "Hi", "max_tokens": 2,
        "aruntime": {"slo": {"ttft_ms": 0.000001}}})
    assert r.status_code == 429, r.text
    [span] = spans(exporter, "text_completion tiny")
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "RateLimitError"
    assert children(exporter, span) == []  # nothing ran


def test_tracing_off_records_nothing_and_keeps_the_callers_trace_id(
        http: httpx.Client, server: BackgroundServer, exporter: InMemorySpanExporter) -> None:
    state = server.server.config.app.state.server
    assert isinstance(telemetry.tracer_of(None), trace.NoOpTracer)
    kept, state.tracer = state.tracer, telemetry.tracer_of(None)
    try:
        r = http.post("/v1/completions", headers={"traceparent": TRACEPARENT},
                      json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200 and last_evidence(server)["trace_id"] == TRACE_ID
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200 and last_evidence(server)["trace_id"] is None
    finally:
        state.tracer = kept
    assert exporter.get_finished_spans() == ()


# ---- run spans ----------------------------------------------------------------------------


@tool(input_schema={"type": "object", "required": ["word"],
                    "properties": {"word": {"type": "string"}}},
      output_schema={"type": "string"})
def shout(args: dict[str, Any]) -> str:
    return str(args["word"]).upper()


@flow
def tool_then_model(ctx: FlowContext, word: str) -> dict[str, Any]:
    loud = ctx.call_tool(shout, {"word": word})
    return {"loud": loud, "model": ctx.call_model(loud, max_tokens=3)}


def test_a_run_is_an_agent_span_over_its_tool_and_model_calls(
        http: httpx.Client, server: BackgroundServer, exporter: InMemorySpanExporter) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    r = http.post("/v1/runs", headers={"traceparent": TRACEPARENT}, json={
        "flow": "test_tracing:tool_then_model", "input": "hey", "run_id": "traced-run"})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    [agent] = spans(exporter, "invoke_agent test_tracing:tool_then_model")
    assert hex_id(agent.context.trace_id) == TRACE_ID
    assert agent.parent is not None and hex_id(agent.parent.span_id, 16) == PARENT_ID
    a = dict(agent.attributes or {})
    assert (a["gen_ai.operation.name"], a["gen_ai.agent.name"], a["gen_ai.conversation.id"],
            a["aruntime.run.status"]) == ("invoke_agent", "test_tracing:tool_then_model",
                                          "traced-run", "completed")
    tool_span, model_span = children(exporter, agent)
    assert tool_span.name == "execute_tool shout"
    t = dict(tool_span.attributes or {})
    assert (t["gen_ai.tool.name"], t["aruntime.run.seq"]) == ("shout", 1)
    entry = http.get("/v1/runs/traced-run").json()["entries"][0]
    assert t["gen_ai.tool.call.id"] == entry["idempotency_key"]
    assert model_span.name == "text_completion tiny" and model_span.kind is SpanKind.INTERNAL
    check_phases(exporter, model_span)
    result = r.json()["result"]["model"]
    assert dict(model_span.attributes or {})["gen_ai.response.id"] == result["request_id"]
    assert last_evidence(server)["trace_id"] == TRACE_ID


def local_tracer() -> tuple[Any, InMemorySpanExporter]:
    spans_out = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans_out))
    return telemetry.tracer_of(provider), spans_out


def test_aruntime_runs_model_calls_nest_under_the_run_and_each_execution_is_a_span(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    from aruntime.agents.models import LocalModels
    from aruntime.agents.runner import Runner
    from aruntime.durable.journal import SqliteJournal

    tracer, out = local_tracer()
    models = LocalModels(tiny_model_dir, device="cpu", tracer=tracer)
    runner = Runner(SqliteJournal(tmp_path / "j.db"), models=models, tracer=tracer)
    try:
        assert runner.start("agent_flows:ask_model", "hello", run_id="m").status == "completed"
        assert runner.resume("m").status == "completed"  # finished: nothing executes again
        assert runner.start("agent_flows:failing", None, run_id="f").status == "failed"
        assert runner.start("agent_flows:ask_name", None, run_id="w").status == "waiting"
    finally:
        models.close()
    [run] = spans(out, "invoke_agent agent_flows:ask_model")
    [call] = children(out, run)
    assert call.name.startswith("text_completion ") and call.kind is SpanKind.INTERNAL
    c = dict(call.attributes or {})
    assert c["gen_ai.usage.output_tokens"] == 4 and c["gen_ai.request.max_tokens"] == 4
    check_phases(out, call)
    [failed] = spans(out, "invoke_agent agent_flows:failing")
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "StepError"
    [waiting] = spans(out, "invoke_agent agent_flows:ask_name")
    assert waiting.status.status_code is StatusCode.UNSET
    assert dict(waiting.attributes or {})["aruntime.run.status"] == "waiting"


# ---- where spans go -----------------------------------------------------------------------


def test_the_environment_decides_whether_spans_are_exported() -> None:
    assert telemetry.provider_from_env({}) is None
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    assert telemetry.provider_from_env({**on, "OTEL_SDK_DISABLED": "true"}) is None
    assert telemetry.provider_from_env({**on, "OTEL_TRACES_EXPORTER": "none"}) is None
    with pytest.raises(UsageError, match="http/protobuf only"):
        telemetry.provider_from_env({**on, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces endpoint: decodes each export and hands it to the server's list."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        export = trace_service_pb2.ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())
        server: Any = self.server
        server.received(self.path, export)

    def log_message(self, *args: Any) -> None:
        pass


def receiver() -> tuple[ThreadingHTTPServer, list[tuple[str, Any]], threading.Event]:
    """An OTLP/HTTP receiver on a loopback port: what it got, and an event set on each post."""
    got: list[tuple[str, Any]] = []
    arrived = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.received = (  # type: ignore[attr-defined]
        lambda path, export: (got.append((path, export)), arrived.set()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got, arrived


def test_aruntime_serve_exports_its_spans_to_the_otlp_endpoint_the_environment_names(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """The whole way: `aruntime serve` with OTEL_EXPORTER_OTLP_ENDPOINT set, one request with a
    traceparent, and its spans arrive at the receiver as OTLP protobuf (sent at the latest
    when the server stops: the batch is flushed on exit)."""
    otlp, got, arrived = receiver()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OTEL_SERVICE_NAME": "aruntime-test",
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp.server_port}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aruntime.cli", "serve", "--model", str(tiny_model_dir),
         "--served-model-name", "tiny", "--port", str(port), "--data-dir", str(tmp_path),
         "--log-level", "info"], env=env, stderr=subprocess.PIPE, text=True)
    started = threading.Event()
    threading.Thread(target=lambda: [started.set() for line in proc.stderr or ()
                                     if "Application startup complete" in line],
                     daemon=True).start()
    try:
        assert started.wait(120), "the server did not start"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                       headers={"traceparent": TRACEPARENT},
                       json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                             "max_tokens": 2})
        assert r.status_code == 200, r.text
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    assert arrived.wait(30)
    otlp.shutdown()
    assert {path for path, _ in got} == {"/v1/traces"}
    sent = {s.name: (s, rs) for _, export in got for rs in export.resource_spans
            for scope in rs.scope_spans for s in scope.spans}
    assert set(sent) == {"chat tiny", "queue", "prefill", "decode"}
    span, resource_spans = sent["chat tiny"]
    resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert resource["service.name"] == "aruntime-test"
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID
    assert span.kind == span.SPAN_KIND_SERVER
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert attrs["gen_ai.operation.name"].string_value == "chat"
    assert attrs["gen_ai.usage.output_tokens"].int_value == 2
    assert {sent[n][0].parent_span_id for n in ("queue", "prefill", "decode")} == {span.span_id}


def test_serve_refuses_an_otlp_protocol_it_cannot_speak_in_one_line(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OTEL_EXPORTER_OTLP_ENDPOINT":
           "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    out = subprocess.run([sys.executable, "-m", "aruntime.cli", "serve", "--model",
                          str(tiny_model_dir), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "aruntime: error: OTLP protocol 'grpc': this runtime exports traces over "
        "http/protobuf only"]


def test_the_evidence_trace_id_is_optional_and_checked() -> None:
    from pydantic import ValidationError

    from aruntime.contracts import EvidenceRecord

    base = {"request_id": "r", "tenant": "t", "model": "m", "model_revision": "sha256:" + "a" * 64,
            "engine_version": "e", "hardware": "cpu", "precision": "float32"}
    assert EvidenceRecord.model_validate(base).trace_id is None  # records from before it
    assert EvidenceRecord.model_validate({**base, "trace_id": TRACE_ID}).trace_id == TRACE_ID
    for bad in ("0" * 32, TRACE_ID.upper(), TRACE_ID[:-1]):
        with pytest.raises(ValidationError, match="trace_id"):
            EvidenceRecord.model_validate({**base, "trace_id": bad})
