"""The confidential services' error answers (the key broker's, the verifier's): OpenAI's error
shape, with the service named in `type`."""

from __future__ import annotations

from fastapi.responses import JSONResponse


def error(status: int, message: str, service: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": f"{service}_error"}},
                        status_code=status)
