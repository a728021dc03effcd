"""Limits on what one request may cost the server, enforced before the app reads it.

`RequestLimits(app, ...)` is a pure ASGI middleware (Starlette's `Class(app, **opts)`), outside
FastAPI's routing, so it acts before any route or body parser runs:

- a head (request line and headers) over `max_head_bytes` is a 431 (uvicorn, given the same
  limit, bounds what it buffers of one that arrives slowly: serve/launch.py);
- a body over `max_body_bytes` is a 413: refused from its `Content-Length` before a byte of it
  is read, or, sent chunked, as soon as the bytes counted so far pass the limit (uvicorn holds at
  most 64 KiB of a body the app has not asked for, so nothing is buffered whole);
- a body whose JSON nests deeper than `max_json_depth` or holds more than `max_json_containers`
  arrays and objects is a 400, read from its bytes as they arrive (serve/json_shape.py): every
  body this server takes is JSON;
- a body that stalls, no bytes for `body_idle_s`, is a 408.

The refusal is answered here, in OpenAI's shape, and the app is stopped by an exception raised
from its `receive` (an `HTTPException`, which FastAPI answers quietly; that answer is dropped).
The idle keep-alive timeout is uvicorn's (serve/launch.py).
"""

from __future__ import annotations

import asyncio
from typing import NoReturn

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aruntime.serve.errors import (
    APIError,
    HeadersTooLargeError,
    InvalidRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    error_response,
)
from aruntime.serve.json_shape import JsonShape, JsonShapeError

# The largest legal request is a few long-context prompts (a 128K-token prompt is about 0.5-1 MB
# as text or as token ids) or a long conversation with tool schemas: 16 MiB holds a batch of
# them. Above it a body is an attack or a mistake: the route parses the whole body at once, with
# the GIL held (even within the JSON limits below, 16 MiB of small numbers is ~0.3 s of parsing),
# and its objects take ~5-10x its bytes in memory.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Twice h11's 16 KiB default: room for a JWT with many claims beside a trace context.
MAX_HEAD_BYTES = 32 * 1024
MAX_JSON_DEPTH = 64  # OpenAI's bodies nest under 10 levels; a tool's JSON Schema a few more
# Far past any conversation or batch; bounds the parser's (and its garbage collector's) work.
MAX_JSON_CONTAINERS = 1 << 20
BODY_IDLE_S = 30.0  # a client mid-body that sends nothing for this long holds a task and a socket


class _Refused(HTTPException):
    """Raised into the app from `receive` once the middleware has answered the request."""


class RequestLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_head_bytes: int = MAX_HEAD_BYTES,
                 max_json_depth: int = MAX_JSON_DEPTH,
                 max_json_containers: int = MAX_JSON_CONTAINERS,
                 body_idle_s: float = BODY_IDLE_S) -> None:
        if min(max_body_bytes, max_head_bytes, max_json_depth, max_json_containers) < 1:
            raise ValueError("request limits must be positive")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.max_json_depth = max_json_depth
        self.max_json_containers = max_json_containers
        self.body_idle_s = body_idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await error_response(refusal)(scope, receive, send)
            return
        guard = _Guard(self, scope, receive, send)
        try:
            await self.app(scope, guard.receive, guard.send)
        except _Refused:
            if not guard.answered:
                raise

    def _refusal(self, scope: Scope) -> APIError | None:
        """What the head alone refuses."""
        head = len(scope.get("raw_path") or b"") + len(scope["query_string"]) + sum(
            len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > self.max_head_bytes:
            return HeadersTooLargeError(f"The request's headers are too large: {head} bytes; "
                                        f"this server takes at most {self.max_head_bytes}",
                                        code="headers_too_large")
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return self.too_large(f"its Content-Length is {declared} bytes")
        return None

    def too_large(self, detail: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is too large: {detail}; this server takes at most "
            f"{self.max_body_bytes} bytes (aruntime serve --max-body-bytes)",
            code="request_too_large")


class _Guard:
    """One request's `receive` and `send` as the app sees them."""

    def __init__(self, limits: RequestLimits, scope: Scope, receive: Receive, send: Send) -> None:
        self.limits = limits
        self.scope = scope
        self._receive = receive
        self._send = send
        self.shape = JsonShape(limits.max_json_depth, limits.max_json_containers)
        self.received = 0
        self.complete = False
        self.started = False  # the app has begun its response
        self.answered = False  # we have answered for the app

    async def receive(self) -> Message:
        if self.complete:  # what follows the body (a disconnect) may take as long as it takes
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), self.limits.body_idle_s)
        except TimeoutError:
            await self._refuse(RequestTimeoutError(
                f"The request body stalled: no bytes for {self.limits.body_idle_s:g} s"))
        if message["type"] != "http.request":
            return message
        body: bytes = message.get("body", b"")
        self.received += len(body)
        self.complete = not message.get("more_body", False)
        if self.received > self.limits.max_body_bytes:
            await self._refuse(self.limits.too_large("it passed the limit as it streamed in"))
        try:
            self.shape.feed(body)
        except JsonShapeError as exc:
            await self._refuse(InvalidRequestError(f"The request body's JSON {exc}",
                                                   code="json_too_complex"))
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return  # the app's own answer to the exception it was given
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def _refuse(self, error: APIError) -> NoReturn:
        if not self.started:  # else the response is under way: the exception ends it
            await error_response(error)(self.scope, self._receive, self._send)
            self.answered = True
        raise _Refused(error.status_code, error.message)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 refuses a malformed one before the app is called
    return None
