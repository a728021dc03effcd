"""The server's OpenAPI description, served at `/openapi.json` (public: it names routes and
shapes, never a key or a tenant).

The OpenAI routes read their bodies raw (serve/protocol.py parses them, for its own 400s), so
FastAPI cannot see them: `request_body(Model)` declares one from the pydantic model the route
validates with. Every error is declared as what it is, OpenAI's `{"error": {...}}` (FastAPI's
own 422 never reaches a client: serve/errors.py answers it as a 400), and the bearer credential
as the security scheme.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.config import JsonDict

# What the request models' untyped fields take (their parsers in serve/protocol.py check them,
# with clearer messages than a type could give), for the description only.
_TEXT: JsonDict = {"type": "string", "minLength": 1}
_TOKEN_IDS: JsonDict = {"type": "array", "items": {"type": "integer", "minimum": 0},
                        "minItems": 1}
PROMPT: JsonDict = {"anyOf": [_TEXT, {"type": "array", "items": _TEXT, "minItems": 1},
                              _TOKEN_IDS, {"type": "array", "items": _TOKEN_IDS, "minItems": 1}]}
STOP: JsonDict = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                            {"type": "null"}]}
# (an assistant's content may also be null, when it calls tools)
CONTENT: JsonDict = {"anyOf": [{"type": "string"}, {"type": "array", "items": {
    "type": "object", "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]}


def fields(names: frozenset[str]) -> JsonDict:
    """An object of only these (untyped) fields."""
    return {"additionalProperties": False, "properties": {name: {} for name in sorted(names)}}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "null"]}}}},
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_ERRORS = {status: {"description": text, "content": {"application/json": {"schema": _ERROR_REF}}}
           for status, text in (("4XX", "the request is refused (OpenAI's error shape)"),
                                ("5XX", "the engine is unavailable (OpenAI's error shape)"))}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra`: its JSON body is `model` (the schema inlined, so it needs no
    component of its own)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline(schema, defs)}}}}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with every `#/$defs/...` reference replaced by its definition (the request
    models are not recursive)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def install(app: FastAPI) -> None:
    """Make `app.openapi()` (what `/openapi.json` serves) describe errors and credentials as
    this server answers them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        spec = generate()
        if fresh:
            _describe(spec)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _describe(spec: dict[str, Any]) -> None:
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "an API key (aruntime keys create) or a JWT, as the server's --auth"}}
    spec["security"] = [{"bearer": []}, {}]  # `--auth none` takes requests without one
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses.update(_ERRORS)
