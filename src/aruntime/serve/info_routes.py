"""What a server says of itself: `/health`, `/metrics`, the models it serves (`/v1/models`,
the ones this principal may invoke) and the key its evidence is signed with
(`GET /v1/evidence/key`: the public key, its id, and the log's current head hash — an anchor
that later shows records cut from the end)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from aruntime.engine.client import EngineDeadError
from aruntime.policy.decision import Action
from aruntime.serve.auth import decide, require_principal
from aruntime.serve.errors import NotFoundError, error_body
from aruntime.serve.metrics import CONTENT_TYPE
from aruntime.serve.request_policy import model_resource
from aruntime.serve.state import ServerState, state_of

DEMO_NOTE = ("random demo weights; pass --model DIR to serve a real Hugging Face checkpoint")
HEALTH_TIMEOUT_S = 5.0

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    try:
        await asyncio.wait_for(state_of(request).client.stats(), HEALTH_TIMEOUT_S)
    except (EngineDeadError, TimeoutError, RuntimeError) as exc:
        return JSONResponse(error_body(f"engine unavailable: {exc}", "server_error",
                                       code="engine_unavailable"), status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", dependencies=[Depends(require_principal)])  # a scraper gets a key too
async def metrics(request: Request) -> Response:
    state = state_of(request)
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
    """The models this principal may invoke (a denial hides a model rather than refusing)."""
    state = state_of(request)
    allowed = decide(request, Action.INVOKE_MODEL, model_resource(state),
                     {"model": state.model_name}, enforce=False)
    return {"object": "list", "data": [_model_card(state)] if not allowed.enforced else []}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    state = state_of(request)
    check_model(state, model)
    decide(request, Action.INVOKE_MODEL, model_resource(state), {"model": state.model_name})
    return _model_card(state)


@router.get("/v1/evidence/key", dependencies=[Depends(require_principal)])
async def evidence_key(request: Request) -> dict[str, Any]:
    """The key that signs this server's evidence, and the chain's head now."""
    state = state_of(request)
    return {"object": "evidence.key", "alg": "Ed25519", "key_id": state.signer.key_id,
            "public_key_pem": state.signer.public_pem(), "head": state.evidence.last_hash}


def check_model(state: ServerState, model: str) -> None:
    name, _, revision = model.partition("@")
    if name != state.model_name or (revision and revision != state.info.revision):
        raise NotFoundError(f"The model '{model}' does not exist", param="model",
                            code="model_not_found")
