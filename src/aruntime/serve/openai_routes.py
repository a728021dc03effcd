"""The OpenAI-compatible routes over the server's pool (serve/app.py builds the app).

A request is parsed and checked here
(400s in OpenAI's shape), fanned out into one engine request per choice, and streamed back or
collected; when it ends, however it ends, its metrics are observed and one evidence record is
appended, signed with the deployment's Ed25519 key. Closing a stream early closes the engine
iterators, which aborts their requests. What the server says of itself (health, metrics,
models, the evidence key) is serve/info_routes.py's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from aruntime import telemetry
from aruntime.adapt.artifact import Kind
from aruntime.engine.client import EngineDeadError
from aruntime.engine.outputs import RequestOutput, TokenLogprob
from aruntime.engine.tokenizer import Tokenizer
from aruntime.serve import confidential_routes, logprobs, tracing
from aruntime.serve import protocol as p
from aruntime.serve.auth import acting, decisions, principal
from aruntime.serve.errors import (
    APIError,
    EngineUnavailableError,
    InvalidRequestError,
    PermissionDeniedError,
)
from aruntime.serve.generation import (
    Choice,
    Generation,
    admit_quota,
    admit_slo,
    collect,
    engine_of,
    finalize,
    merged,
    plan,
    served_model,
)
from aruntime.serve.info_routes import check_model
from aruntime.serve.openapi import request_body
from aruntime.serve.prompt_bound import chat_prompt, completion_prompts, off_loop, prompt_chars
from aruntime.serve.release_uses import (
    Uses,
    record_failure,
    record_refused,
    resolve_named,
    uses_of,
    with_releases,
)
from aruntime.serve.request_policy import check_output, decide_request
from aruntime.serve.state import ServerState, state_of
from aruntime.serve.tool_responses import StreamedTools, finish_reason, full_message
from aruntime.serve.tool_specs import tool_plan

logger = logging.getLogger(__name__)

router = APIRouter()


RequestT = TypeVar("RequestT", bound=p._GenerationRequest)


async def _admit(request: Request, model: type[RequestT]) -> tuple[ServerState, RequestT]:
    """Who asks, the body, the model it names, and the policy's decisions on them: every 4xx
    happens here."""
    state = state_of(request)
    principal(request)  # a 401 before the body is read
    req = p.validate(model, p.parse_body(await request.body()))
    check_model(state, req.model)
    p.check_request(req)
    try:
        decide_request(request, state, req)
    except PermissionDeniedError:
        record_refused(state, uses_of(request))  # a policy version's refusal shows it here
        raise
    return state, req


@router.post("/v1/completions", openapi_extra=request_body(p.CompletionRequest))
async def completions(request: Request) -> Response:
    state, req = await _admit(request, p.CompletionRequest)
    prompts = await off_loop(prompt_chars(req.prompt), completion_prompts, state.tokenizer,
                             req.prompt, req.n, state.longest_token_bytes,
                             state.info.max_model_len)
    gen = plan(state, req, "cmpl", prompts, "prompt")
    if req.echo:  # the output text and evidence stay the model's; responses lead with these
        texts = p.echo_texts(req.prompt, prompts, state.tokenizer)
        for c in gen.choices:
            c.echo = texts[c.index // req.n]
    return await _respond(state, request, gen, req)


@router.post("/v1/chat/completions", openapi_extra=request_body(p.ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    state, req = await _admit(request, p.ChatCompletionRequest)
    messages = p.chat_messages(req.messages)
    resolve_named(state, request, getattr(request.state, "tenant", "default"), req)
    uses = uses_of(request)
    try:
        gen = await _chat_plan(state, req, messages, uses)
        response = await _respond(state, request, gen, req)
    except APIError:
        record_failure(state, uses)  # a version whose requests fail shows it here
        raise
    if uses.mirrored():
        _then(response, lambda: _shadow(state, req, messages, uses))
    return response


async def _chat_plan(state: ServerState, req: p.ChatCompletionRequest,
                     messages: list[dict[str, Any]], uses: Uses,
                     shadow: bool = False) -> Generation:
    """The generation of a chat request, with its released prompt and retrieved passages (the
    shadow's, for a mirrored copy) set before the messages."""
    if Kind.RETRIEVAL in uses.releases:  # a search over the release's documents: off the loop
        messages, retrieved = await asyncio.to_thread(with_releases, messages, uses.releases,
                                                      shadow)
    else:
        messages, retrieved = with_releases(messages, uses.releases, shadow)
    tools = tool_plan(req.tools, req.tool_choice, req.parallel_tool_calls)
    prompt = await off_loop(prompt_chars(messages), chat_prompt, state.tokenizer, messages,
                            tools, state.tool_parser, state.longest_token_bytes,
                            state.info.max_model_len)
    gen = plan(state, req, "shadow" if shadow else "chatcmpl", [prompt], "messages",
               messages=messages, tools=tools)
    gen.uses, gen.shadow, gen.retrieved = uses, shadow, retrieved
    return gen


async def _shadow(state: ServerState, req: p.ChatCompletionRequest,
                  messages: list[dict[str, Any]], uses: Uses) -> None:
    """The candidates answer a copy of the request, after the user's answer is complete; its
    answer is dropped and only its samples (did it fail, how fast) are kept."""
    try:
        gen = await _chat_plan(state, req, messages, uses, shadow=True)
        await collect(state, gen)
    except Exception as exc:  # the candidate's failure counts against it, never the user
        logger.info("the shadow request failed: %s", exc)
        record_failure(state, uses, shadow=True)


def _then(response: Response, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` once the response is sent (after its own background task, if any)."""
    before = response.background

    async def both() -> None:
        if before is not None:
            await before()
        await work()

    response.background = BackgroundTask(both)


# ---- responses ----------------------------------------------------------------------------------


async def _respond(state: ServerState, request: Request, gen: Generation,
                   req: p._GenerationRequest) -> Response:
    gen.principal, gen.decisions = acting(request), decisions(request)
    gen.uses = uses_of(request)
    gen.attestation_ref = getattr(request.state, "attestation_ref", None)
    trace_context = (req.aruntime or {}).get("trace_context")  # checked by the contract
    tracing.begin(state, gen, telemetry.parent_context(request.headers, trace_context),
                  stream=req.stream, server=request.scope.get("server"))
    try:
        if not engine_of(state, gen).is_alive:  # before a 200 starts a stream
            raise EngineUnavailableError("the engine is not running")
        admit_quota(state, gen)
        admit_slo(state, gen)
    except APIError as exc:  # refused before it ran: no evidence record, a failed span
        if gen.lease is not None:
            gen.lease.release(0)
        tracing.fail(gen, exc)
        tracing.end(state, gen)
        raise
    state.traffic.begin(gen, served_model(state, gen))
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def finalized() -> None:  # a client gone before the stream began
            finalize(state, gen)

        return StreamingResponse(_sse(state, gen, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(finalized))
    work = asyncio.create_task(collect(state, gen, lambda: check_output(state, gen)))
    gone = asyncio.create_task(_wait_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()  # the client left (or we are cancelled): abort its engine requests
            finalize(state, gen)
    if not work.done():
        return Response(status_code=499)  # nobody is listening; the status is for the logs
    try:
        work.result()
    except EngineDeadError as exc:
        raise EngineUnavailableError(f"the engine is not running: {exc}") from None
    except ValueError as exc:  # the engine refused the request
        raise InvalidRequestError(str(exc)) from None
    return JSONResponse(_full_response(state, gen))


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _full_response(state: ServerState, gen: Generation) -> dict[str, Any]:
    choices = []
    for c in gen.choices:
        head = _echo_logprobs(state.tokenizer, c)  # first: it sets the offsets after the prompt
        lps = _logprobs(state.tokenizer, gen.kind, c, c.logprobs or [])
        if head is not None and lps is not None:
            lps = logprobs.joined_logprobs(head, lps)
        if gen.kind == "chat" and gen.tools.offered:
            message, reason = full_message(state.tool_parser, gen.tools, c.text, c.finish_reason)
            choices.append({"index": c.index, "message": message, "logprobs": lps,
                            "finish_reason": reason})
        elif gen.kind == "chat":
            choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text,
                            "refusal": None}, "logprobs": lps, "finish_reason": c.finish_reason})
        else:
            choices.append({"index": c.index, "text": c.echo + c.text, "logprobs": lps,
                            "finish_reason": c.finish_reason})
    obj = "chat.completion" if gen.kind == "chat" else "text_completion"
    return {"id": gen.id, "object": obj, "created": gen.created, "model": state.model_name,
            "system_fingerprint": None, "choices": choices, "usage": gen.usage()}


async def _sse(state: ServerState, gen: Generation, include_usage: bool) -> AsyncIterator[str]:
    stream = merged(state, gen)
    chunk = _chunker(state, gen, include_usage)
    try:
        if gen.kind == "chat":
            for c in gen.choices:
                yield chunk(c.index, {"role": "assistant", "content": ""}, None, None)
        echo = {c.index for c in gen.choices if c.echo}  # sent with (before) the first delta
        readers = ({c.index: StreamedTools(state.tool_parser, gen.tools) for c in gen.choices}
                   if gen.kind == "chat" and gen.tools.offered else {})
        async for index, out in stream:
            c = gen.apply(index, out)
            if out.finished and all(ch.finish_reason is not None for ch in gen.choices):
                check_output(state, gen)  # before the last chunks: the hook may withhold them
            if index in echo:
                echo.discard(index)
                yield chunk(index, c.echo, _echo_logprobs(state.tokenizer, c), None)
            lps = _logprobs(state.tokenizer, gen.kind, c, out.logprobs)
            if index in readers:
                for piece in _tool_chunks(chunk, readers[index], index, out, lps, c):
                    yield piece
            elif gen.kind == "chat":
                if out.new_text or lps:
                    yield chunk(index, {"content": out.new_text}, lps, None)
                if out.finished:
                    yield chunk(index, {}, None, c.finish_reason)
            elif out.new_text or lps or out.finished:
                yield chunk(index, out.new_text, lps, c.finish_reason)
        if include_usage:
            yield _data({"id": gen.id, "object": _chunk_object(gen), "created": gen.created,
                         "model": state.model_name, "choices": [], "usage": gen.usage()})
        yield "data: [DONE]\n\n"
    except (EngineDeadError, ValueError, PermissionDeniedError) as exc:
        error = (EngineUnavailableError(str(exc)) if isinstance(exc, EngineDeadError)
                 else exc if isinstance(exc, PermissionDeniedError)
                 else InvalidRequestError(str(exc)))
        tracing.fail(gen, exc)
        yield _data(error.body())
        yield "data: [DONE]\n\n"
    finally:
        await stream.aclose()
        finalize(state, gen)


def _tool_chunks(chunk: Callable[[int, Any, Any, str | None], str], reader: StreamedTools,
                 index: int, out: RequestOutput, lps: Any, c: Choice) -> list[str]:
    """A chat delta of a request that offered tools: content and call pieces as the reader
    releases them, the logprobs on the first."""
    deltas = reader.push(out.new_text, out.finished)
    if lps and not deltas:
        deltas = [{"content": ""}]
    chunks = [chunk(index, d, lps if k == 0 else None, None) for k, d in enumerate(deltas)]
    if out.finished:
        chunks.append(chunk(index, {}, None, finish_reason(c.finish_reason, reader.called)))
    return chunks


def _chunk_object(gen: Generation) -> str:
    return "chat.completion.chunk" if gen.kind == "chat" else "text_completion"


def _chunker(state: ServerState, gen: Generation,
             include_usage: bool) -> Callable[[int, Any, Any, str | None], str]:
    def chunk(index: int, delta: Any, logprobs: Any, finish_reason: str | None) -> str:
        body = {"index": index, "delta" if gen.kind == "chat" else "text": delta,
                "logprobs": logprobs, "finish_reason": finish_reason}
        obj: dict[str, Any] = {"id": gen.id, "object": _chunk_object(gen),
                               "created": gen.created, "model": state.model_name,
                               "choices": [body]}
        if include_usage:
            obj["usage"] = None
        return _data(obj)
    return chunk


def _data(obj: Any) -> str:
    return p.sse_event(obj)


def _echo_logprobs(tok: Tokenizer, c: Choice) -> dict[str, Any] | None:
    """The echoed prompt's logprobs; moves `c.text_offset` past the prompt."""
    if not c.echo or c.prompt_logprobs is None:
        return None
    obj, c.text_offset = logprobs.echo_logprobs(tok, c.prompt, c.prompt_logprobs)
    return obj


def _logprobs(tok: Tokenizer, kind: str, c: Choice,
              lps: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """`c.text_offset` carries completions' text offsets across deltas."""
    if lps is None or c.params.logprobs is None:
        return None
    if kind == "chat":
        return logprobs.chat_logprobs(tok, lps)
    obj, c.text_offset = logprobs.completion_logprobs(tok, lps, c.text_offset)
    return obj


router.include_router(confidential_routes.router)  # the sealed twin of the chat route
