"""The server's exception tree and the handlers that render every error in OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.

    APIError                  any error we answer ourselves
    ├── InvalidRequestError   400 invalid_request_error (bad JSON, types, ranges, too long)
    ├── AuthenticationError   401 authentication_error (no, wrong or revoked credential)
    ├── PermissionDeniedError 403 permission_error (another tenant; a policy denial)
    ├── NotFoundError         404 invalid_request_error (unknown model: code model_not_found)
    ├── RequestTimeoutError   408 invalid_request_error (a request body that stalled)
    ├── PayloadTooLargeError  413 invalid_request_error (a body over the server's limit)
    ├── HeadersTooLargeError  431 invalid_request_error (a request head over the limit)
    ├── RateLimitError        429 rate_limit_exceeded (admission: code slo_unattainable, with
    │                         a Retry-After header)
    ├── EngineUnavailableError 503 server_error (the engine core is gone)
    └── ReleaseUnavailableError 503 server_error (a release the server serves is refused:
                              code release_unavailable)

FastAPI's own 422 (RequestValidationError) and Starlette's 404/405 are rewritten the same way,
so a client never sees another shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    status_code = 500
    error_type = "server_error"
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(APIError):
    status_code = 401
    error_type = "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key")
        self.headers = {"WWW-Authenticate": "Bearer"}


class PermissionDeniedError(APIError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"


class RequestTimeoutError(APIError):
    status_code = 408
    error_type = "invalid_request_error"


class PayloadTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"


class HeadersTooLargeError(APIError):
    status_code = 431
    error_type = "invalid_request_error"


class RateLimitError(APIError):
    """Refused before any work was done; the client may retry after `retry_after_s`."""

    status_code = 429
    error_type = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, param: str | None = None,
                 code: str = "slo_unattainable") -> None:
        super().__init__(message, param=param, code=code)
        self.headers = {"Retry-After": str(max(1, retry_after_s))}


class EngineUnavailableError(APIError):
    status_code = 503
    error_type = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="engine_unavailable")


class ReleaseUnavailableError(APIError):
    """A release of the server's own (its policy bundle, its router policy) that cannot serve
    the version a request was assigned: refused at verification. Nothing else may serve it."""

    status_code = 503
    error_type = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="release_unavailable")


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    return error_response(InvalidRequestError(str(first.get("msg")), param=".".join(loc) or None))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}"
    else:
        message = str(exc.detail)
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return JSONResponse(error_body(message, type_), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal server error", "server_error"), status_code=500)
