"""OpenTelemetry traces: where spans go, and the pieces serve/ and agents/ build theirs from.

A process exports spans over OTLP (HTTP/protobuf, a batch processor) when its environment names
an endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`;
`service.name` from `OTEL_SERVICE_NAME`, default `aruntime`). Otherwise tracing is off: the API's
no-op tracer, whose spans record nothing but still carry a caller's trace id through.

`process_tracer()` is that tracer, made once per process. Everything that makes spans takes a
tracer (`build_app(tracer=...)`, `Runner(tracer=...)`), so a test hands in one over its own
provider (an SDK `TracerProvider` with an in-memory exporter) and nothing global is set.
Prometheus metrics (serve/metrics.py) are apart from this and stay on whatever this says.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aruntime import __version__
from aruntime.errors import UsageError

TRACER_NAME = "aruntime"
DEFAULT_SERVICE_NAME = "aruntime"
PROVIDER_NAME = "aruntime"  # gen_ai.provider.name: who serves the model
_PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent/tracestate, nothing else


def provider_from_env(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """An SDK provider exporting to the OTLP endpoint `environ` names; None when it names
    none (or disables the SDK, or sets the traces exporter to `none`)."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or ""
    if not endpoint and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    disabled = (environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
                or environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none")
    if not endpoint or disabled:
        return None
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol != "http/protobuf":
        raise UsageError(f"OTLP protocol {protocol!r}: this runtime exports traces over "
                         "http/protobuf only")
    # imported here: a process that traces nothing never loads the SDK or the exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({
        SERVICE_NAME: environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
        SERVICE_VERSION: __version__})
    provider = SdkTracerProvider(resource=resource)  # flushed and shut down at exit
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def tracer_of(provider: TracerProvider | None) -> Tracer:
    """The runtime's tracer on `provider`; the no-op tracer for None."""
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(TRACER_NAME, __version__)


@functools.cache
def process_tracer() -> Tracer:
    """This process's tracer, from its environment, made on first use (a bad OTLP setting is
    a UsageError then: `aruntime serve` asks before it starts an engine)."""
    return tracer_of(provider_from_env())


def parent_context(headers: Mapping[str, str] | None = None,
                   traceparent: str | None = None) -> Context:
    """The caller's span as a parent: W3C `traceparent`/`tracestate` headers, else a bare
    `traceparent` value (the request contract's `trace_context`); empty when neither is valid."""
    if headers is not None and headers.get("traceparent"):
        return _PROPAGATOR.extract(headers)
    if traceparent:
        return _PROPAGATOR.extract({"traceparent": traceparent})
    return Context()


def ns(t: float) -> int:
    """`time.time()` seconds as the nanoseconds spans take."""
    return int(t * 1e9)


def trace_id(span: Span) -> str | None:
    """The span's trace id as 32 hex digits; None when it has no valid context (tracing off
    and no caller's trace to carry)."""
    ctx = span.get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None


def fail(span: Span, error: BaseException | str, message: str | None = None) -> None:
    """Mark the span failed: `error.type` (the exception's class name, or a given type) and
    an ERROR status."""
    kind = error if isinstance(error, str) else type(error).__name__
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, message if message is not None else str(error)))


def phase_spans(tracer: Tracer, parent: Span, arrival: float, scheduled: float | None,
                first_token: float | None, finish: float | None,
                attributes: Mapping[str, str | int] | None = None) -> None:
    """An engine request's `queue` (arrival → scheduled), `prefill` (scheduled → first token)
    and `decode` (first token → finish) as children of `parent`, timed by the engine's own
    clock; a phase the request never reached is left out, one it never finished ends at
    `finish`. Only a recording parent gets them."""
    if not parent.is_recording() or not arrival:
        return
    context = trace.set_span_in_context(parent)
    marks = [arrival, scheduled, first_token, finish]
    for i, name in enumerate(("queue", "prefill", "decode")):
        start, end = marks[i], marks[i + 1]
        if start is None:
            break
        if end is None:
            end = finish
        if end is None:
            break
        span = tracer.start_span(name, context, SpanKind.INTERNAL, attributes=attributes,
                                 start_time=ns(start))
        span.end(end_time=ns(max(start, end)))
