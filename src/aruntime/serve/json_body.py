"""A request body's JSON, read strictly: RFC 8259 text in UTF-8 (no NaN or Infinity, no number
too large for a float), with no lone UTF-16 surrogate, each violation a 400 in OpenAI's shape.

Python's `json` takes all of those, and the values then fail far from the body: a lone
surrogate where text is encoded (the tokenizer, the journal, a file name), an infinite float
where a value is written as JSON. Its nesting is bounded before (serve/limits.py).

`loads(raw)` is the OpenAI routes' parser (serve/protocol.py); `JsonBodyRoute` gives the routes
whose bodies FastAPI parses into a model (serve/runs_routes.py) the same one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from aruntime.serve.errors import InvalidRequestError

# Cheap tests of the raw bytes, so the exact (Python-level) checks run only when they may find
# something: a \u escape of a surrogate; an exponent of three digits or a 309-digit mantissa.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LARGE_NUMBER = re.compile(rb"[eE][+-]?\d{3}|\d{309}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(raw: bytes) -> Any:
    """The value of a JSON body; a 400 (InvalidRequestError) for anything RFC 8259 refuses."""
    parse_float = _finite if _LARGE_NUMBER.search(raw) else None
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_float=parse_float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(data):
        raise InvalidRequestError("The request body is not valid JSON text: a \\u escape names "
                                  "half of a UTF-16 surrogate pair without the other")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is too large for a float")
    return value


def _has_lone_surrogate(data: Any) -> bool:
    """Whether a string (or key) of `data` holds a surrogate: `json` joins a pair into one
    character, so any left is lone."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class _StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads(await self.body())
            except InvalidRequestError as exc:  # FastAPI passes an HTTPException on as it is
                raise HTTPException(400, exc.message) from None
        return self._json


class JsonBodyRoute(APIRoute):
    """A route whose JSON body FastAPI parses with `loads` (FastAPI's custom-route hook)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictRequest(request.scope, request.receive))

        return strict
