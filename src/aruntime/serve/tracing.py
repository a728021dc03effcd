"""One API request's span, in OpenTelemetry's GenAI conventions: `chat {model}` for
/v1/chat/completions, `text_completion {model}` for /v1/completions and the model calls of flows.

`begin` opens it when the request is planned — a child of the caller's `traceparent`, or of the
flow's `invoke_agent` span — with the request's `gen_ai.request.*` attributes; `end` closes it
when the request ends, however it ends (serve/generation.py's `finalize`), with the response's
id, finish reasons and token usage, and each choice's engine request as `queue`, `prefill` and
`decode` children timed by the engine (n > 1: three a choice, marked with its index). A request
refused before it ran ends through `fail` then `end`. Its trace id goes into the request's
evidence record; with tracing off the span is the caller's own, so the caller's trace id still
does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.semconv.attributes import server_attributes
from opentelemetry.trace import SpanKind

from aruntime import telemetry

if TYPE_CHECKING:
    from aruntime.serve.generation import Generation
    from aruntime.serve.state import ServerState

OPERATIONS = {"chat": "chat", "completion": "text_completion"}


def begin(state: ServerState, gen: Generation, parent: Context, *,
          kind: SpanKind = SpanKind.SERVER, stream: bool = False,
          server: tuple[str, int] | None = None) -> None:
    """Open the request's span on `gen.span`. `server`: the address the request came to."""
    operation = OPERATIONS[gen.kind]
    gen.span = state.tracer.start_span(f"{operation} {state.model_name}", parent, kind)
    if gen.span.is_recording():  # attributes only cost where something records them
        gen.span.set_attributes(_request_attributes(state, gen, operation, stream, server))


def _request_attributes(state: ServerState, gen: Generation, operation: str, stream: bool,
                        server: tuple[str, int] | None) -> dict[str, Any]:
    params = gen.choices[0].params
    attrs: dict[str, Any] = {
        ga.GEN_AI_OPERATION_NAME: operation, ga.GEN_AI_PROVIDER_NAME: telemetry.PROVIDER_NAME,
        ga.GEN_AI_REQUEST_MODEL: state.model_name,
        ga.GEN_AI_REQUEST_MAX_TOKENS: params.max_tokens,
        ga.GEN_AI_REQUEST_TEMPERATURE: params.temperature, ga.GEN_AI_REQUEST_TOP_P: params.top_p,
        ga.GEN_AI_REQUEST_STREAM: stream, "aruntime.tenant": gen.tenant,
    }
    if params.top_k:
        attrs[ga.GEN_AI_REQUEST_TOP_K] = params.top_k
    if len(gen.choices) > 1:
        attrs[ga.GEN_AI_REQUEST_CHOICE_COUNT] = len(gen.choices)
    if params.seed is not None:  # the first choice's is the request's (the rest add their index)
        attrs[ga.GEN_AI_REQUEST_SEED] = params.seed
    if params.stop:
        attrs[ga.GEN_AI_REQUEST_STOP_SEQUENCES] = list(params.stop)
    for name, value in ((ga.GEN_AI_REQUEST_PRESENCE_PENALTY, params.presence_penalty),
                        (ga.GEN_AI_REQUEST_FREQUENCY_PENALTY, params.frequency_penalty)):
        if value:
            attrs[name] = value
    if server is not None:
        attrs[server_attributes.SERVER_ADDRESS], attrs[server_attributes.SERVER_PORT] = server
    return attrs


def fail(gen: Generation, error: BaseException) -> None:
    """The request failed with `error`: `error.type` is its class (RateLimitError,
    EngineDeadError, ...), the status its message."""
    telemetry.fail(gen.span, error)


def end(state: ServerState, gen: Generation, now: float | None = None) -> None:
    """Close the request's span with what the response said, and its phases; once."""
    span = gen.span
    if not span.is_recording():
        return
    now = now or time.time()
    usage = gen.usage()
    span.set_attributes({
        ga.GEN_AI_RESPONSE_ID: gen.id, ga.GEN_AI_RESPONSE_MODEL: state.model_name,
        ga.GEN_AI_RESPONSE_FINISH_REASONS: [c.finish_reason or "abort" for c in gen.choices],
        ga.GEN_AI_USAGE_INPUT_TOKENS: usage["prompt_tokens"],
        ga.GEN_AI_USAGE_OUTPUT_TOKENS: usage["completion_tokens"],
        ga.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: usage["prompt_tokens_details"]["cached_tokens"],
    })
    for c in gen.choices:
        last = c.last
        if last is None:
            continue  # never reached an engine
        attrs: dict[str, str | int] = {"aruntime.engine_request_id": c.request_id}
        if len(gen.choices) > 1:
            attrs["aruntime.choice.index"] = c.index
        telemetry.phase_spans(state.tracer, span, last.arrival_time, last.scheduled_time,
                              last.first_token_time, last.finish_time or now, attrs)
    span.end(end_time=telemetry.ns(now))


def trace_id(gen: Generation) -> str | None:
    """The trace the request belongs to, for its evidence record."""
    return telemetry.trace_id(gen.span)
