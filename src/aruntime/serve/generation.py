"""One API request in flight: its choices, its fan-out into engine requests, admission
against its SLO, and the metrics and evidence record written when it ends, however it ends."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from aruntime import __version__
from aruntime.adapt.artifact import Kind
from aruntime.contracts import EvidenceRecord, PolicyDecision, Route, Timings, Usage
from aruntime.contracts.request import SLO, Confidentiality
from aruntime.engine.guided_grammar import GuidedDecodingError, check_guided
from aruntime.engine.outputs import RequestOutput, TokenLogprob
from aruntime.engine.sampling import SamplingParams
from aruntime.evidence.log import output_digest
from aruntime.kv.keys import NO_SCOPE, CacheScope
from aruntime.policy.decision import Decision
from aruntime.policy.identity import Principal
from aruntime.policy.quotas import Lease, QuotaExceeded
from aruntime.serve import protocol as p
from aruntime.serve import tracing
from aruntime.serve.admission import Prediction
from aruntime.serve.errors import (
    InvalidRequestError,
    RateLimitError,
)
from aruntime.serve.release_uses import Uses, record_sample, released
from aruntime.serve.tool_specs import NO_TOOLS, ToolPlan

if TYPE_CHECKING:
    from aruntime.cluster.serving import ServingPool
    from aruntime.serve.state import ServerState

logger = logging.getLogger(__name__)


# ---- one API request in flight ------------------------------------------------------------------


@dataclass
class Choice:
    """What one engine request has produced so far."""

    index: int
    request_id: str
    prompt: list[int]
    params: SamplingParams
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    last: RequestOutput | None = None
    logprobs: list[TokenLogprob] | None = None
    text_offset: int = 0  # for completions-style logprobs
    echo: str = ""  # completions' `echo`: the prompt text, sent before the output
    prompt_logprobs: list[TokenLogprob | None] | None = None  # echo with logprobs

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Generation:
    id: str
    kind: str  # "completion" | "chat"
    created: int
    choices: list[Choice]
    tenant: str
    scope: CacheScope = NO_SCOPE  # keys this tenant's KV blocks apart from every other's
    slo: SLO | None = None
    tools: ToolPlan = NO_TOOLS  # what the request offered; its answers are read for calls
    started: float = field(default_factory=time.time)
    span: trace.Span = trace.INVALID_SPAN  # serve/tracing.py's, once `tracing.begin` opens it
    # who asked (None for a flow's model call) and the policy decisions taken for the request
    principal: Principal | None = None
    decisions: list[Decision] = field(default_factory=list)
    output_checked: bool = False
    lease: Lease | None = None  # its hold on the tenant's quota, released in `finalize`
    attestation_ref: str | None = None  # the attested key a confidential request came sealed to
    uses: Uses = field(default_factory=Uses)  # the releases that serve it, as assigned
    retrieved: list[str] = field(default_factory=list)  # NAME/ID of the passages set before it
    shadow: bool = False  # a rollout's mirrored copy: its answer is dropped, it leaves no record
    _done: bool = False

    def apply(self, index: int, out: RequestOutput) -> Choice:
        c = self.choices[index]
        c.text += out.new_text
        c.token_ids.extend(out.new_token_ids)
        c.last = out
        if out.prompt_logprobs is not None:
            c.prompt_logprobs = out.prompt_logprobs
        if out.logprobs:
            if c.logprobs is None:
                c.logprobs = []
            c.logprobs.extend(out.logprobs)  # not a new list a token
        if out.finished:
            c.finish_reason = out.finish_reason or "stop"
        return c

    def usage(self) -> dict[str, Any]:
        prompts: dict[int, tuple[int, int]] = {}
        for c in self.choices:  # n choices share a prompt: count it (and its cache hits) once
            key = id(c.prompt)
            cached = c.last.num_cached_tokens if c.last else 0
            prompts[key] = (len(c.prompt), max(cached, prompts.get(key, (0, 0))[1]))
        prompt_tokens = sum(n for n, _ in prompts.values())
        completion = sum(c.num_tokens for c in self.choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
                "prompt_tokens_details": {"cached_tokens": sum(k for _, k in prompts.values())}}


def plan(state: ServerState, req: p._GenerationRequest, prefix: str,
          prompts: list[list[int]], prompt_param: str,
          messages: list[dict[str, Any]] | None = None, tools: ToolPlan = NO_TOOLS) -> Generation:
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    max_len = state.info.max_model_len
    choices = []
    tenant, shared, slo, confidential = "default", 0, None, False
    for pi, prompt in enumerate(prompts):
        max_tokens = p.max_tokens_for(req, len(prompt), max_len, prompt_param)
        for i in range(req.n):
            index = pi * req.n + i
            params = p.sampling_params(req, max_tokens, index, state.info.vocab_size)
            if tools.constrained:
                params = _with_tool_constraint(state, tools, params)
            choices.append(Choice(index, f"{request_id}-{index}", prompt, params))
        inputs = {"messages": messages} if messages is not None else {"prompt_token_ids": prompt}
        contract = p.request_contract(req, request_id, state.model_name, inputs,
                                      choices[-1].params)
        tenant, shared, slo = contract.tenant, contract.shared_prefix_tokens, contract.slo
        confidential = contract.confidentiality != Confidentiality.NONE
    kind = "chat" if messages is not None else "completion"
    # Derived from the tenant's secret salt, so no other tenant can compute (or probe) its keys.
    kv_salt = hmac.new(state.salt(tenant), b"aruntime kv block keys", "sha256").digest()
    # A confidential request's blocks stay on the device: no tier, no shared prefix.
    scope = (CacheScope(kv_salt, device_only=True) if confidential
             else CacheScope(kv_salt, shared))
    return Generation(request_id, kind, int(time.time()), choices, tenant, scope, slo, tools)


def _with_tool_constraint(state: ServerState, tools: ToolPlan,
                          params: SamplingParams) -> SamplingParams:
    """A required (or named) call always parses and its arguments validate."""
    if params.guided is not None:
        raise InvalidRequestError("a required or named tool_choice cannot be combined with "
                                  "another constraint on the output (response_format)",
                                  param="tool_choice")
    guided = state.tool_parser.guided(tools)
    try:  # here, not in the engine: a schema the grammar cannot enforce is the caller's 400
        check_guided(guided)
    except GuidedDecodingError as exc:
        raise InvalidRequestError(f"tools: {exc}", param="tools") from None
    return dataclasses.replace(params, guided=guided)


async def merged(state: ServerState,
                  gen: Generation) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """Every choice's deltas as they come. Closing this (or cancelling its consumer) closes
    each engine iterator, and that aborts whatever has not finished."""
    if len(gen.choices) == 1:
        c = gen.choices[0]
        stream = _engine_stream(state, gen, c)
        try:
            async for out in stream:
                yield 0, out
        finally:
            await stream.aclose()
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | Exception]] = asyncio.Queue()

    async def pump(c: Choice) -> None:
        try:
            async for out in _engine_stream(state, gen, c):
                queue.put_nowait((c.index, out))
        except Exception as exc:  # handed to the consumer
            queue.put_nowait((c.index, exc))

    tasks = [asyncio.create_task(pump(c)) for c in gen.choices]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item.finished:
                remaining -= 1
            yield index, item
    finally:
        for t in tasks:
            t.cancel()  # synchronous: safe when our own task is being cancelled


# ---- admission control -------------------------------------------------------------------------


def admit_quota(state: ServerState, gen: Generation) -> None:
    """Take the request's hold on its tenant's quota (429 past it): one request, its prompts
    and each choice's max_tokens as its token estimate, settled on what it used."""
    prompts = {id(c.prompt): len(c.prompt) for c in gen.choices}
    estimate = sum(prompts.values()) + sum(c.params.max_tokens for c in gen.choices)
    try:
        gen.lease = state.quotas.acquire(gen.tenant, estimate)
    except QuotaExceeded as exc:
        state.metrics.quota_rejected.labels(exc.reason).inc()
        code = ("concurrency_limit_exceeded" if exc.reason == "concurrency"
                else "rate_limit_exceeded")
        raise RateLimitError(exc.message, retry_after_s=exc.retry_after_s, code=code,
                             param="aruntime.tenant") from None


def admit_slo(state: ServerState, gen: Generation) -> None:
    """Refuse now (429) when no worker is predicted to meet the request's SLO. A refused
    request gets no evidence record: nothing ran, nothing was produced."""
    if gen.slo is None:
        return
    first = gen.choices[0].prompt
    # Every choice is an engine request: the first prompt may hit the cache, the rest count whole.
    rest = sum(len(c.prompt) for c in gen.choices[1:])
    candidates = engine_of(state, gen).candidate_loads(first, gen.scope)
    predictions: list[Prediction] = [
        state.admission.predict(load, len(first) - cached + rest, len(gen.choices))
        for load, cached in candidates]
    rejection = state.admission.check(gen.slo, predictions)
    if rejection is not None:
        state.metrics.rejected.labels(state.model_name, rejection.reason).inc()
        raise RateLimitError(rejection.message, param=f"aruntime.slo.{rejection.reason}_ms",
                             retry_after_s=rejection.retry_after_s)


async def _engine_stream(state: ServerState, gen: Generation,
                         c: Choice) -> AsyncGenerator[RequestOutput, None]:
    """One choice's engine request; feeds admission's costs from the engine's own timings when
    it finishes."""
    first, batch, generated = False, 1, 0
    client, engine = engine_of(state, gen), gen.uses.served(Kind.MODEL, gen.shadow)
    route = gen.uses.served(Kind.ROUTE, gen.shadow)
    if route is not None:  # a route release's version, as its rollout assigned it
        client.route_by(c.request_id, route)
    stream = client.generate(c.request_id, c.prompt, c.params, gen.scope)
    if engine is not None:
        engine.streams += 1  # a retired model version's engine closes only when none are left
    try:
        async for out in stream:
            generated += len(out.new_token_ids)
            if not first:
                first = True
                batch = client.running_beside(c.request_id)
            if out.finished:
                state.admission.costs.observe(out, generated, batch)
            yield out
    finally:
        if engine is not None:
            engine.streams -= 1
        await stream.aclose()


async def collect(state: ServerState, gen: Generation,
                  on_whole: Callable[[], None] | None = None) -> None:
    """Run every choice to its end, applying its deltas, then `on_whole` (the output hook);
    metrics and evidence once it ends."""
    stream = merged(state, gen)
    try:
        async for index, out in stream:
            gen.apply(index, out)
        if on_whole is not None:
            on_whole()
    except Exception as exc:  # raised on to the caller, which answers it
        tracing.fail(gen, exc)
        raise
    finally:
        await stream.aclose()
        finalize(state, gen)


def engine_of(state: ServerState, gen: Generation) -> ServingPool:
    """The pool a generation runs on: its model version's engine, else the server's."""
    engine = gen.uses.served(Kind.MODEL, gen.shadow)
    return engine.client if engine is not None else state.client


def served_model(state: ServerState, gen: Generation) -> str:
    """The model as the console names what served a request: a model release's version
    (`NAME@VERSION`, its first 19 characters), else the served model's name."""
    engine = gen.uses.served(Kind.MODEL, gen.shadow)
    return f"{state.model_name}@{engine.version[:19]}" if engine is not None else state.model_name


def finalize(state: ServerState, gen: Generation) -> None:
    """Observe metrics and append the evidence record; once per API request, however it ended.
    Synchronous on purpose: it runs in `finally` blocks of cancelled tasks."""
    if gen._done:
        return
    gen._done = True
    now = time.time()
    ended = []
    for c in gen.choices:
        last = c.last or RequestOutput(c.request_id, [], "", arrival_time=gen.started)
        if c.finish_reason is None:
            c.finish_reason = "abort"
            last = RequestOutput(c.request_id, [], "", True, "abort",
                                 arrival_time=last.arrival_time,
                                 first_token_time=last.first_token_time)
        state.metrics.observe_finished(last, c.num_tokens, last.finish_time or now)
        ended.append((last, c.num_tokens, last.finish_time or now))
    state.traffic.end(gen, ended)
    if gen.lease is not None:
        used = gen.usage()
        gen.lease.release(used["prompt_tokens"] + used["completion_tokens"])
    record = _evidence(state, gen, now)
    record_sample(state, gen, record)
    try:
        if not gen.shadow:
            state.evidence.append(record)
    except Exception:  # a failed append must not fail the response
        logger.exception("could not append the evidence record of %s", gen.id)
    tracing.end(state, gen, now)


def _evidence(state: ServerState, gen: Generation, now: float) -> EvidenceRecord:
    usage = gen.usage()
    firsts = [c.last.first_token_time for c in gen.choices
              if c.last is not None and c.last.first_token_time is not None]
    ttft = max(0.0, min(firsts) - gen.started) if firsts else None
    queued = [c.last.scheduled_time - c.last.arrival_time for c in gen.choices
              if c.last is not None and c.last.scheduled_time is not None]
    tpots = [(c.last.finish_time - c.last.first_token_time) / (c.num_tokens - 1)
             for c in gen.choices if c.last is not None and c.last.finish_time is not None
             and c.last.first_token_time is not None and c.num_tokens > 1]
    engine = gen.uses.served(Kind.MODEL, gen.shadow)
    info = engine.info if engine is not None else state.info
    return EvidenceRecord(
        request_id=gen.id, tenant=gen.tenant, model=state.model_name,
        model_revision=info.revision, engine_version=f"aruntime-engine/{__version__}",
        hardware=info.hardware, precision=info.dtype,
        route=_route(state, gen, usage["prompt_tokens_details"]["cached_tokens"]),
        timings=Timings(queue_s=max(0.0, max(queued)) if queued else None, ttft_s=ttft,
                        tpot_s=max(0.0, sum(tpots) / len(tpots)) if tpots else None,
                        e2e_s=max(0.0, now - gen.started)),
        usage=Usage(prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                    cached_tokens=usage["prompt_tokens_details"]["cached_tokens"]),
        finish_reasons=[c.finish_reason or "abort" for c in gen.choices],
        policy_decisions=[PolicyDecision.model_validate(d.evidence()) for d in gen.decisions],
        attestation_ref=gen.attestation_ref,
        output_digest=output_digest([c.text for c in gen.choices], state.salt(gen.tenant)),
        trace_id=tracing.trace_id(gen), releases=released(state, gen.uses),
        retrieved=gen.retrieved or None,
    )


def _route(state: ServerState, gen: Generation, used: int) -> Route:
    """Where the request ran and the cached tokens the router predicted there (a request that
    never reached a worker names the device it was meant for)."""
    routes = [(c, r) for c in gen.choices
              if (r := engine_of(state, gen).route_of(c.request_id)) is not None]
    if not routes:
        return Route(worker=f"none:{state.info.device}", cached_tokens_used=used)
    predicted: dict[int, int] = {}  # per prompt, like usage's cached tokens
    for c, r in routes:
        predicted[id(c.prompt)] = max(predicted.get(id(c.prompt), 0), r.predicted_cached_tokens)
    return Route(worker=",".join(sorted({r.worker for _, r in routes})),
                 cached_tokens_predicted=sum(predicted.values()), cached_tokens_used=used)
