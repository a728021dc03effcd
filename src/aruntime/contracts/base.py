"""Shared pieces of the contracts: canonical digests, field types, the strict base model."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)

from aruntime.timeutil import parse_rfc3339, rfc3339

# ---- canonical digests ------------------------------------------------------------------------


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity: the same bytes on every machine."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_digest(obj: Any) -> str:
    """`sha256:<hex>` over the canonical JSON of `obj`."""
    return "sha256:" + hashlib.sha256(canonical_json(obj)).hexdigest()


# ---- shared field types -----------------------------------------------------------------------


def _to_utc(value: object) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: give it a timezone (UTC)")
        return value.astimezone(UTC)
    if isinstance(value, str):
        return parse_rfc3339(value)
    raise ValueError("expected an RFC 3339 UTC time ending in 'Z', e.g. '2025-01-02T03:04:05Z'")


UtcDatetime = Annotated[
    datetime,
    PlainValidator(_to_utc),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": "Z$"}),
]

DIGEST_RE = re.compile(r"^[a-z0-9-]+:[0-9a-f]{16,128}$")
HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
HASH_SCHEMA: dict[str, Any] = {"pattern": HASH_RE.pattern}
DIGEST_SCHEMA: dict[str, Any] = {"pattern": DIGEST_RE.pattern}
TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

NonEmpty = Annotated[str, Field(min_length=1, max_length=256)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0.0)]


def check_pattern(pattern: re.Pattern[str], value: str, message: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"{message}; got {value!r}")
    return value


class StrictModel(BaseModel):
    """Unknown fields are errors, NaN/Infinity too (canonical JSON cannot hold them)."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


def validation_message(exc: ValidationError) -> str:
    """One line naming each bad field: `sampling.temperature: Input should be ... ; ...`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
