"""Confidential requests over HTTP: `GET /v1/attestation?nonce=N` is the server's side of the
handshake (its evidence, binding the nonce and its HPKE key), and
`POST /v1/confidential/chat/completions` takes a body sealed to that key — `{"sealed": …}`,
holding the chat request and the client's reply key — runs it on the ordinary chat path and
answers `{"sealed": …}` to the reply key. The prompt and the answer exist in clear only in this
process's memory: the evidence record keeps their digests and the attestation reference.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.types import Message

from aruntime.confidential.sealing import SealError
from aruntime.serve import protocol as p
from aruntime.serve.auth import require_principal
from aruntime.serve.errors import InvalidRequestError, PermissionDeniedError
from aruntime.serve.openapi import request_body
from aruntime.serve.state import state_of

router = APIRouter(dependencies=[Depends(require_principal)])
CHAT = "/v1/chat/completions"


def _boundary(request: Request) -> Any:
    boundary = state_of(request).boundary
    if boundary is None:
        raise PermissionDeniedError("this server has no attester: it cannot take confidential "
                                    "requests", code="not_attestable")
    return boundary


@router.get("/v1/attestation")
async def attestation(request: Request, nonce: str) -> dict[str, Any]:
    try:
        result: dict[str, Any] = _boundary(request).attest(nonce)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="nonce") from None
    return result


class SealedRequest(BaseModel):
    sealed: str = Field(description="HPKE-sealed {request, reply_key}, base64url")


@router.post("/v1/confidential/chat/completions", openapi_extra=request_body(SealedRequest))
async def confidential_chat(request: Request) -> Response:
    from aruntime.serve.openai_routes import chat_completions

    boundary = _boundary(request)
    body = p.parse_body(await request.body())
    sealed = body.get("sealed") if isinstance(body, dict) else None
    if not isinstance(sealed, str):
        raise InvalidRequestError("a confidential request is {\"sealed\": \"<base64url>\"}",
                                  param="sealed")
    try:
        inner, reply_key = await asyncio.to_thread(boundary.open_request, sealed)
    except (SealError, ValueError) as exc:
        raise InvalidRequestError(f"the sealed request does not open: {exc}",
                                  param="sealed") from None
    if inner.get("stream"):
        raise InvalidRequestError("confidential requests are not streamed", param="stream")
    ext = inner.get("aruntime") if isinstance(inner.get("aruntime"), dict) else {}
    inner["aruntime"] = {**ext, "confidentiality": ext.get("confidentiality") or "attested"}
    request.state.sealed = True
    request.state.attestation_ref = f"hpke:{boundary.key.key_hash}"
    answer = await chat_completions(_inner(request, json.dumps(inner).encode()))
    sealed_answer = boundary.seal_answer(bytes(answer.body), reply_key)
    return JSONResponse({"object": "sealed", "sealed": sealed_answer},
                        status_code=answer.status_code)


def _inner(request: Request, body: bytes) -> Request:
    """The opened request, as the chat route reads one: same connection, same state."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()  # then only the client going away

    return Request({**request.scope, "path": CHAT}, receive)
