"""The OpenAI-compatible HTTP API over an `EngineClient`.

`build_app` composes a FastAPI app whose state lives on `app.state.server` and whose resources
(evidence log, metrics registry) open in its lifespan. A request is parsed and checked here
(400s in OpenAI's shape), fanned out into one engine request per choice, and streamed back or
collected; when it ends, however it ends, its metrics are observed and one evidence record is
appended, signed with the deployment's Ed25519 key. Closing a stream early closes the engine
iterators, which aborts their requests.

`GET /v1/evidence/key` serves what a verifier needs: the public key (PEM), its key id, and the
log's current head hash (an anchor that later shows records cut from the end).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from aruntime import __version__
from aruntime.contracts import EvidenceRecord, Route, Timings, Usage
from aruntime.contracts.request import SLO
from aruntime.engine.client import EngineClient, EngineDeadError
from aruntime.engine.core_proc import ModelInfo
from aruntime.engine.outputs import RequestOutput, TokenLogprob
from aruntime.engine.sampling import SamplingParams
from aruntime.engine.tokenizer import ChatTemplateError, Tokenizer
from aruntime.serve import protocol as p
from aruntime.serve.admission import Admission, Prediction
from aruntime.serve.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    error_body,
    install_error_handlers,
)
from aruntime.serve.metrics import CONTENT_TYPE, Metrics
from aruntime.serve.router import Router
from aruntime.state.evidence import EvidenceLog, output_digest
from aruntime.state.signing import DeploymentKey, default_key_path

logger = logging.getLogger(__name__)

DEMO_NOTE = ("random demo weights; pass --model DIR to serve a real Hugging Face checkpoint")
HEALTH_TIMEOUT_S = 5.0
LOCAL_WORKER = "local"


@dataclass
class ServerState:
    client: EngineClient
    tokenizer: Tokenizer
    model_name: str
    info: ModelInfo
    demo: bool
    data_dir: Path
    metrics: Metrics
    evidence: EvidenceLog
    signer: DeploymentKey
    created: int = field(default_factory=lambda: int(time.time()))
    admission: Admission = field(default_factory=Admission)
    # A single engine's load, kept from what this API sent it (a pool's router keeps its own).
    local_load: Router = field(default_factory=Router)
    _salts: dict[str, bytes] = field(default_factory=dict)

    def salt(self, tenant: str) -> bytes:
        """The tenant's output-digest salt; deleting its file unlinks digests from outputs."""
        if tenant not in self._salts:
            path = self.data_dir / "salts" / f"{tenant}.key"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self._salts[tenant] = path.read_bytes()
            else:
                salt = os.urandom(32)
                with os.fdopen(fd, "wb") as f:
                    f.write(salt)
                self._salts[tenant] = salt
        return self._salts[tenant]


def build_app(client: EngineClient, tokenizer: Tokenizer, model_name: str, *,
              model_info: ModelInfo, data_dir: Path, demo: bool = False,
              owns_client: bool = False, signer: DeploymentKey | None = None) -> FastAPI:
    """The app; with `owns_client` its lifespan shuts the engine client down on exit. Evidence
    is signed by `signer`, by default the key under `data_dir` (created there if missing)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        key = signer or DeploymentKey.load_or_create(default_key_path(Path(data_dir)))
        evidence = EvidenceLog(Path(data_dir) / "evidence.jsonl", key)
        app.state.server = ServerState(client, tokenizer, model_name, model_info, demo,
                                       Path(data_dir), Metrics(model_name), evidence, key)
        try:
            yield
        finally:
            evidence.close()
            if owns_client:
                await client.shutdown()

    app = FastAPI(title="ARuntime", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.include_router(router)
    return app


router = APIRouter()


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


@router.get("/health")
async def health(request: Request) -> Response:
    try:
        await asyncio.wait_for(_state(request).client.stats(), HEALTH_TIMEOUT_S)
    except (EngineDeadError, TimeoutError, RuntimeError) as exc:
        return JSONResponse(error_body(f"engine unavailable: {exc}", "server_error",
                                       code="engine_unavailable"), status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = _state(request)
    try:
        stats = await asyncio.wait_for(state.client.stats(), HEALTH_TIMEOUT_S)
    except (EngineDeadError, TimeoutError, RuntimeError):
        stats = None  # still serve the API-side series
    extra: Callable[[], str] | None = getattr(state.client, "metrics_text", None)
    body = state.metrics.render(stats) + (extra().encode() if extra else b"")
    return Response(body, media_type=CONTENT_TYPE)


def _model_card(state: ServerState) -> dict[str, Any]:
    ext: dict[str, Any] = {"revision": state.info.revision, "demo": state.demo}
    if state.demo:
        ext["note"] = DEMO_NOTE
    return {"id": state.model_name, "object": "model", "created": state.created,
            "owned_by": "aruntime", "root": state.info.model,
            "max_model_len": state.info.max_model_len, "aruntime": ext}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(_state(request))]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    _check_model(state, model)
    return _model_card(state)


@router.get("/v1/evidence/key")
async def evidence_key(request: Request) -> dict[str, Any]:
    """The key that signs this server's evidence, and the chain's head now."""
    state = _state(request)
    return {"object": "evidence.key", "alg": "Ed25519", "key_id": state.signer.key_id,
            "public_key_pem": state.signer.public_pem(), "head": state.evidence.last_hash}


RequestT = TypeVar("RequestT", bound=p._GenerationRequest)


def _check_model(state: ServerState, model: str) -> None:
    name, _, revision = model.partition("@")
    if name != state.model_name or (revision and revision != state.info.revision):
        raise NotFoundError(f"The model '{model}' does not exist", param="model",
                            code="model_not_found")


async def _admit(request: Request, model: type[RequestT]) -> tuple[ServerState, RequestT]:
    """Parse and check a body, and the model it names: every 4xx happens here."""
    state = _state(request)
    req = p.validate(model, p.parse_body(await request.body()))
    _check_model(state, req.model)
    p.check_request(req)
    return state, req


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state, req = await _admit(request, p.CompletionRequest)
    prompts = p.completion_prompts(req.prompt, state.tokenizer)
    gen = _plan(state, req, "cmpl", prompts, "prompt")
    return await _respond(state, request, gen, req)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state, req = await _admit(request, p.ChatCompletionRequest)
    messages = p.chat_messages(req.messages)
    try:
        text = state.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except ChatTemplateError as exc:
        raise InvalidRequestError(str(exc), param="messages") from None
    # The template already spells the special tokens it wants (BOS included).
    prompt = state.tokenizer.encode(text, add_special_tokens=False)
    if not prompt:
        raise InvalidRequestError("messages rendered to an empty prompt", param="messages")
    gen = _plan(state, req, "chatcmpl", [prompt], "messages", messages=messages)
    return await _respond(state, request, gen, req)


# ---- one API request in flight ------------------------------------------------------------------


@dataclass
class Choice:
    """What one engine request has produced so far."""

    index: int
    request_id: str
    prompt: list[int]
    params: SamplingParams
    text: str = ""
    num_tokens: int = 0
    finish_reason: str | None = None
    last: RequestOutput | None = None
    logprobs: list[TokenLogprob] | None = None
    text_offset: int = 0  # for completions-style logprobs


@dataclass
class Generation:
    id: str
    kind: str  # "completion" | "chat"
    created: int
    choices: list[Choice]
    tenant: str
    kv_salt: bytes = b""  # keys this tenant's KV blocks apart from every other tenant's
    shared_prefix_tokens: int = 0
    slo: SLO | None = None
    started: float = field(default_factory=time.time)
    _done: bool = False

    def apply(self, index: int, out: RequestOutput) -> Choice:
        c = self.choices[index]
        c.text += out.new_text
        c.num_tokens += len(out.new_token_ids)
        c.last = out
        if out.logprobs:
            c.logprobs = (c.logprobs or []) + out.logprobs
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


def _plan(state: ServerState, req: p._GenerationRequest, prefix: str,
          prompts: list[list[int]], prompt_param: str,
          messages: list[dict[str, Any]] | None = None) -> Generation:
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    max_len = state.info.max_model_len
    choices = []
    tenant, shared, slo = "default", 0, None
    for pi, prompt in enumerate(prompts):
        max_tokens = p.max_tokens_for(req, len(prompt), max_len, prompt_param)
        for i in range(req.n):
            index = pi * req.n + i
            params = p.sampling_params(req, max_tokens, index, state.info.vocab_size)
            choices.append(Choice(index, f"{request_id}-{index}", prompt, params))
        inputs = {"messages": messages} if messages is not None else {"prompt_token_ids": prompt}
        contract = p.request_contract(req, request_id, state.model_name, inputs,
                                      choices[-1].params)
        tenant, shared, slo = contract.tenant, contract.shared_prefix_tokens, contract.slo
    kind = "chat" if messages is not None else "completion"
    # Derived from the tenant's secret salt, so no other tenant can compute (or probe) its keys.
    kv_salt = hmac.new(state.salt(tenant), b"aruntime kv block keys", "sha256").digest()
    return Generation(request_id, kind, int(time.time()), choices, tenant, kv_salt, shared, slo)


async def _merged(state: ServerState,
                  gen: Generation) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Every choice's deltas as they come. Closing this (or cancelling its consumer) closes
    each engine iterator, and that aborts whatever has not finished."""
    if len(gen.choices) == 1:
        c = gen.choices[0]
        stream = _engine_stream(state, gen, c)
        try:
            async for out in stream:
                yield 0, out
        finally:
            await _aclose(stream)
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | Exception]] = asyncio.Queue()

    async def pump(c: Choice) -> None:
        try:
            async for out in _engine_stream(state, gen, c):
                queue.put_nowait((c.index, out))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
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


def _pool_loads(state: ServerState) -> Callable[..., list[Any]] | None:
    loads: Callable[..., list[Any]] | None = getattr(state.client, "candidate_loads", None)
    return loads


def _admit_slo(state: ServerState, gen: Generation) -> None:
    """Refuse now (429) when no worker is predicted to meet the request's SLO. A refused
    request gets no evidence record: nothing ran, nothing was produced."""
    if gen.slo is None:
        return
    first = gen.choices[0].prompt
    # Every choice is an engine request: the first prompt may hit the cache, the rest count whole.
    rest = sum(len(c.prompt) for c in gen.choices[1:])
    loads = _pool_loads(state)
    if loads is not None:
        candidates = loads(first, gen.kv_salt, gen.shared_prefix_tokens)
    else:
        candidates = [(state.local_load.load(LOCAL_WORKER), 0)]
    predictions: list[Prediction] = [
        state.admission.predict(load, len(first) - cached + rest, len(gen.choices))
        for load, cached in candidates]
    rejection = state.admission.check(gen.slo, predictions)
    if rejection is not None:
        state.metrics.rejected.labels(state.model_name, rejection.reason).inc()
        raise RateLimitError(rejection.message, param=f"aruntime.slo.{rejection.reason}_ms",
                             retry_after_s=rejection.retry_after_s)


async def _engine_stream(state: ServerState, gen: Generation,
                         c: Choice) -> AsyncIterator[RequestOutput]:
    """One choice's engine request; keeps a single engine's load and feeds admission's costs
    from the engine's own timings when it finishes."""
    book = None if _pool_loads(state) is not None else state.local_load
    prefill, first, batch, generated = max(1, len(c.prompt)), False, 1, 0
    if book is not None:
        book.sent(LOCAL_WORKER, prefill)
    stream = state.client.generate(c.request_id, c.prompt, c.params, gen.kv_salt,
                                   gen.shared_prefix_tokens)
    try:
        async for out in stream:
            generated += len(out.new_token_ids)
            if not first:
                first = True
                if book is not None:
                    book.prefilled(LOCAL_WORKER, prefill)
                batch = _running_beside(state, c.request_id)
            if out.finished:
                state.admission.costs.observe(out, generated, batch)
            yield out
    finally:
        if book is not None:
            book.finished(LOCAL_WORKER, prefill, first)
        await _aclose(stream)


def _running_beside(state: ServerState, request_id: str) -> int:
    """Decodes running on the request's worker now, itself included."""
    route_of: Callable[[str], Any] | None = getattr(state.client, "route_of", None)
    router: Router | None = getattr(state.client, "router", None)
    route = route_of(request_id) if route_of is not None else None
    if route is not None and router is not None:
        return max(1, router.load(route.worker).running)
    return max(1, state.local_load.load(LOCAL_WORKER).running)


async def _aclose(stream: AsyncIterator[Any]) -> None:
    aclose: Callable[[], Any] | None = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _finalize(state: ServerState, gen: Generation) -> None:
    """Observe metrics and append the evidence record; once per API request, however it ended.
    Synchronous on purpose: it runs in `finally` blocks of cancelled tasks."""
    if gen._done:
        return
    gen._done = True
    now = time.time()
    for c in gen.choices:
        last = c.last or RequestOutput(c.request_id, [], "", arrival_time=gen.started)
        if c.finish_reason is None:
            c.finish_reason = "abort"
            last = RequestOutput(c.request_id, [], "", True, "abort",
                                 arrival_time=last.arrival_time,
                                 first_token_time=last.first_token_time)
        state.metrics.observe_finished(last, c.num_tokens, last.finish_time or now)
    try:
        state.evidence.append(_evidence(state, gen, now))
    except Exception:  # a failed append must not fail the response
        logger.exception("could not append the evidence record of %s", gen.id)


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
    info = state.info
    return EvidenceRecord(
        request_id=gen.id, tenant=gen.tenant, model=state.model_name,
        model_revision=info.revision, engine_version=f"aruntime-engine/{__version__}",
        hardware=info.hardware, precision=info.dtype,
        route=_route(state, gen, usage["prompt_tokens_details"]["cached_tokens"]),
        timings=Timings(queue_s=max(0.0, max(queued)) if queued else None, ttft_s=ttft, tpot_s=max(0.0, sum(tpots) / len(tpots)) if tpots else None,
                        e2e_s=max(0.0, now - gen.started)),
        usage=Usage(prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                    cached_tokens=usage["prompt_tokens_details"]["cached_tokens"]),
        finish_reasons=[c.finish_reason or "abort" for c in gen.choices],
        output_digest=output_digest([c.text for c in gen.choices], state.salt(gen.tenant)),
    )


def _route(state: ServerState, gen: Generation, used: int) -> Route:
    """Where the request ran; behind a router, also the cached tokens it predicted there."""
    route_of: Callable[[str], Any] | None = getattr(state.client, "route_of", None)
    routes = [(c, r) for c in gen.choices
              if (r := route_of(c.request_id)) is not None] if route_of else []
    if not routes:
        return Route(worker=f"local:{state.info.device}", cached_tokens_used=used)
    predicted: dict[int, int] = {}  # per prompt, like usage's cached tokens
    for c, r in routes:
        predicted[id(c.prompt)] = max(predicted.get(id(c.prompt), 0), r.predicted_cached_tokens)
    return Route(worker=",".join(sorted({r.worker for _, r in routes})),
                 cached_tokens_predicted=sum(predicted.values()), cached_tokens_used=used)


# ---- responses ----------------------------------------------------------------------------------


async def _respond(state: ServerState, request: Request, gen: Generation,
                   req: p._GenerationRequest) -> Response:
    if not getattr(state.client, "is_alive", True):  # before a 200 starts a stream
        raise EngineUnavailableError("the engine is not running")
    _admit_slo(state, gen)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(state, gen, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    work = asyncio.create_task(_collect(state, gen))
    gone = asyncio.create_task(_wait_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()  # the client left (or we are cancelled): abort its engine requests
            _finalize(state, gen)
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


async def _collect(state: ServerState, gen: Generation) -> None:
    stream = _merged(state, gen)
    try:
        async for index, out in stream:
            gen.apply(index, out)
    finally:
        await _aclose(stream)
        _finalize(state, gen)


def _full_response(state: ServerState, gen: Generation) -> dict[str, Any]:
    choices = []
    for c in gen.choices:
        lps = _logprobs(state.tokenizer, gen.kind, c, c.logprobs or [])
        if gen.kind == "chat":
            choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text,
                            "refusal": None}, "logprobs": lps, "finish_reason": c.finish_reason})
        else:
            choices.append({"index": c.index, "text": c.text, "logprobs": lps,
                            "finish_reason": c.finish_reason})
    obj = "chat.completion" if gen.kind == "chat" else "text_completion"
    return {"id": gen.id, "object": obj, "created": gen.created, "model": state.model_name,
            "system_fingerprint": None, "choices": choices, "usage": gen.usage()}


async def _sse(state: ServerState, gen: Generation, include_usage: bool) -> AsyncIterator[str]:
    stream = _merged(state, gen)
    chunk = _chunker(state, gen, include_usage)
    try:
        if gen.kind == "chat":
            for c in gen.choices:
                yield chunk(c.index, {"role": "assistant", "content": ""}, None, None)
        async for index, out in stream:
            c = gen.apply(index, out)
            lps = _logprobs(state.tokenizer, gen.kind, c, out.logprobs)
            if gen.kind == "chat":
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
    except (EngineDeadError, ValueError) as exc:
        error = (EngineUnavailableError(str(exc)) if isinstance(exc, EngineDeadError)
                 else InvalidRequestError(str(exc)))
        yield _data(error.body())
        yield "data: [DONE]\n\n"
    finally:
        await _aclose(stream)
        _finalize(state, gen)


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


def _logprobs(tok: Tokenizer, kind: str, c: Choice,
              lps: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """`c.text_offset` carries completions' text offsets across deltas."""
    if lps is None or c.params.logprobs is None:
        return None
    if kind == "chat":
        return p.chat_logprobs(tok, lps)
    obj, c.text_offset = p.completion_logprobs(tok, lps, c.text_offset)
    return obj
