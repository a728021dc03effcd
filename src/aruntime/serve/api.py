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
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from aruntime import __version__
from aruntime.cluster.serving import ServingPool
from aruntime.engine.client import EngineDeadError
from aruntime.engine.core_proc import ModelInfo
from aruntime.engine.outputs import TokenLogprob
from aruntime.engine.tokenizer import ChatTemplateError, Tokenizer
from aruntime.evidence.log import EvidenceLog
from aruntime.evidence.signing import DeploymentKey, default_key_path
from aruntime.serve import protocol as p
from aruntime.serve.admission import Admission
from aruntime.serve.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    NotFoundError,
    error_body,
    install_error_handlers,
)
from aruntime.serve.flow_models import ServedModels
from aruntime.serve.generation import (
    Choice,
    Generation,
    aclose,
    admit_slo,
    collect,
    finalize,
    merged,
    plan,
)
from aruntime.serve.metrics import CONTENT_TYPE, Metrics
from aruntime.serve.runs_routes import open_runner
from aruntime.serve.runs_routes import router as runs_router

logger = logging.getLogger(__name__)

DEMO_NOTE = ("random demo weights; pass --model DIR to serve a real Hugging Face checkpoint")
HEALTH_TIMEOUT_S = 5.0


@dataclass
class ServerState:
    client: ServingPool
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


def build_app(client: ServingPool, tokenizer: Tokenizer, model_name: str, *,
              model_info: ModelInfo, data_dir: Path, demo: bool = False,
              owns_client: bool = False, signer: DeploymentKey | None = None) -> FastAPI:
    """The app; with `owns_client` its lifespan shuts the engine client down on exit. Evidence
    is signed by `signer`, by default the key under `data_dir` (created there if missing)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        key = signer or DeploymentKey.load_or_create(default_key_path(Path(data_dir)))
        evidence = EvidenceLog(Path(data_dir) / "evidence.jsonl", key)
        state = ServerState(client, tokenizer, model_name, model_info, demo, Path(data_dir),
                            Metrics(model_name, client.collectors()), evidence, key)
        app.state.server = state
        # flows this server runs call models the way its HTTP requests do
        app.state.runner = open_runner(Path(data_dir), key,
                                       ServedModels(state, asyncio.get_running_loop()))
        try:
            yield
        finally:
            evidence.close()
            app.state.runner.journal.close()
            if owns_client:
                await client.shutdown()

    app = FastAPI(title="ARuntime", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(runs_router)
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
    return Response(state.metrics.render(stats), media_type=CONTENT_TYPE)


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
    gen = plan(state, req, "cmpl", prompts, "prompt")
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
    gen = plan(state, req, "chatcmpl", [prompt], "messages", messages=messages)
    return await _respond(state, request, gen, req)


# ---- responses ----------------------------------------------------------------------------------


async def _respond(state: ServerState, request: Request, gen: Generation,
                   req: p._GenerationRequest) -> Response:
    if not state.client.is_alive:  # before a 200 starts a stream
        raise EngineUnavailableError("the engine is not running")
    admit_slo(state, gen)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(state, gen, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    work = asyncio.create_task(collect(state, gen))
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
    stream = merged(state, gen)
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
        await aclose(stream)
        finalize(state, gen)


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
