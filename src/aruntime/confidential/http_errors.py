"""The confidential services' error answers (the key broker's, the verifier's): OpenAI's error
shape, with the service named in `type`; and a client's reading of one (any of our servers')."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


def error(status: int, message: str, service: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": f"{service}_error"}},
                        status_code=status)


def message_of(response: Any) -> str:
    """The `error.message` of an answer in OpenAI's shape, else the start of its body."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(response.text[:200])
