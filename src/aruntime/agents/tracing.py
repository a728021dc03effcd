"""A run's spans, in OpenTelemetry's GenAI conventions.

`invoke_agent {flow}` covers one execution of a run (a start, or a resume after a crash or a
person's answer: each is its own span, `gen_ai.conversation.id` the run id ties them together),
and is the current span while the flow runs, so what the flow calls nests under it:
`execute_tool {tool}` for each attempt at a tool call (a call answered from the journal ran
before and gets none), and the model calls — `text_completion {model}` from `LocalModels`
here, or from the server's own request path in a server (serve/flow_models.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.trace import Span, SpanKind, Tracer

from aruntime import telemetry
from aruntime.engine.sampling import SamplingParams


class EngineTimes(Protocol):
    """The part of an engine's final output a model call's span is timed from."""

    arrival_time: float
    scheduled_time: float | None
    first_token_time: float | None
    finish_time: float | None
    num_prompt_tokens: int
    num_cached_tokens: int


@contextmanager
def _current(tracer: Tracer, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
    """A span that is current inside the block; an exception through it marks it failed."""
    with tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes,
                                      record_exception=False,
                                      set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            telemetry.fail(span, exc)
            raise


def agent_span(tracer: Tracer, flow: str, run_id: str) -> Any:
    """`invoke_agent {flow}`, current while the run's flow executes."""
    return _current(tracer, f"invoke_agent {flow}", {
        ga.GEN_AI_OPERATION_NAME: "invoke_agent", ga.GEN_AI_PROVIDER_NAME: telemetry.PROVIDER_NAME,
        ga.GEN_AI_AGENT_NAME: flow, ga.GEN_AI_CONVERSATION_ID: run_id})


def tool_span(tracer: Tracer, tool: str, call_id: str, run_id: str, seq: int) -> Any:
    """`execute_tool {tool}` around one attempt; `call_id` is the call's idempotency key, the
    same on every attempt, and the one a side-effecting tool is handed."""
    return _current(tracer, f"execute_tool {tool}", {
        ga.GEN_AI_OPERATION_NAME: "execute_tool", ga.GEN_AI_TOOL_NAME: tool,
        ga.GEN_AI_TOOL_CALL_ID: call_id, ga.GEN_AI_TOOL_TYPE: "function",
        ga.GEN_AI_CONVERSATION_ID: run_id, "aruntime.run.seq": seq})


def model_span(tracer: Tracer, model: str, params: SamplingParams) -> Any:
    """`text_completion {model}` for a flow's call to an in-process engine client."""
    attrs: dict[str, Any] = {
        ga.GEN_AI_OPERATION_NAME: "text_completion",
        ga.GEN_AI_PROVIDER_NAME: telemetry.PROVIDER_NAME, ga.GEN_AI_REQUEST_MODEL: model,
        ga.GEN_AI_REQUEST_MAX_TOKENS: params.max_tokens,
        ga.GEN_AI_REQUEST_TEMPERATURE: params.temperature}
    if params.seed is not None:
        attrs[ga.GEN_AI_REQUEST_SEED] = params.seed
    return _current(tracer, f"text_completion {model}", attrs)


def model_done(tracer: Tracer, span: Span, request_id: str, model: str, output_tokens: int,
               finish_reason: str | None, last: EngineTimes | None) -> None:
    """What the call answered, and its engine request's queue, prefill and decode."""
    if not span.is_recording():
        return
    span.set_attributes({
        ga.GEN_AI_RESPONSE_ID: request_id, ga.GEN_AI_RESPONSE_MODEL: model,
        ga.GEN_AI_RESPONSE_FINISH_REASONS: [finish_reason or "abort"],
        ga.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens})
    if last is not None:
        span.set_attributes({ga.GEN_AI_USAGE_INPUT_TOKENS: last.num_prompt_tokens,
                             ga.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: last.num_cached_tokens})
        telemetry.phase_spans(tracer, span, last.arrival_time, last.scheduled_time,
                              last.first_token_time, last.finish_time,
                              {"aruntime.engine_request_id": request_id})
