"""The evidence record, `aruntime.evidence/v1`: what happened, hash-chained."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from aruntime import __version__
from aruntime.contracts.base import (
    DIGEST_RE,
    DIGEST_SCHEMA,
    HASH_RE,
    HASH_SCHEMA,
    Count,
    NonEmpty,
    Seconds,
    StrictModel,
    UtcDatetime,
    check_pattern,
    sha256_digest,
)
from aruntime.timeutil import utc_now

TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")

# ---- evidence record --------------------------------------------------------------------------


class Route(StrictModel):
    worker: NonEmpty
    cached_tokens_predicted: Count | None = None
    cached_tokens_used: Count | None = None


class PolicyDecision(StrictModel):
    """One decision at one decision point (policy/decision.py). `reasons` are the determining
    policy ids; `mode` "log-only" means a denial was recorded but not enforced. The fields
    after `reasons` are optional, so records written before them stay valid."""

    policy_version: NonEmpty
    decision: Literal["allow", "deny"]
    reasons: list[str] = []
    action: str | None = None
    resource: str | None = None
    mode: Literal["enforce", "log-only"] | None = None
    latency_us: Annotated[float, Field(ge=0.0)] | None = None


class Timings(StrictModel):
    queue_s: Seconds | None = None
    ttft_s: Seconds | None = None
    tpot_s: Seconds | None = None
    e2e_s: Seconds | None = None


class Usage(StrictModel):
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    cached_tokens: Count = 0

    @model_validator(mode="after")
    def _cached_within_prompt(self) -> Usage:
        if self.cached_tokens > self.prompt_tokens:
            raise ValueError("cached_tokens cannot exceed prompt_tokens")
        return self


class EvidenceRecord(StrictModel):
    """What happened to one request. Holds digests, never content: erasing the salt behind
    `output_digest` unlinks it from the outputs without breaking the hash chain."""

    schema_: Literal["aruntime.evidence/v1"] = Field("aruntime.evidence/v1", alias="schema")
    request_id: NonEmpty
    tenant: NonEmpty
    created_at: UtcDatetime = Field(default_factory=utc_now)
    model: NonEmpty
    model_revision: str = Field(
        description="digest, e.g. 'sha256:<hex>'", json_schema_extra=DIGEST_SCHEMA
    )
    engine_version: NonEmpty
    runtime_version: NonEmpty = Field(default_factory=lambda: __version__)
    hardware: NonEmpty
    precision: NonEmpty
    route: Route | None = None
    policy_decisions: list[PolicyDecision] = []
    attestation_ref: str | None = None
    timings: Timings = Field(default_factory=Timings)
    usage: Usage = Field(default_factory=Usage)
    finish_reasons: list[str] = []
    output_digest: str | None = Field(
        None, description="salted digest of the outputs", json_schema_extra=DIGEST_SCHEMA
    )
    # The OpenTelemetry trace the request's span is in: the caller's (traceparent), or the one
    # the server started. Optional, so records written before it existed stay valid.
    trace_id: str | None = Field(None, description="W3C trace id, 32 lowercase hex digits",
                                 json_schema_extra={"pattern": TRACE_ID_RE.pattern})
    # What served it, each a release: kind ("model", "prompt", "route", "retrieval", "policy")
    # -> name@version.
    releases: dict[str, str] | None = None
    # The passages a retrieval release set before the messages, each NAME/DOCUMENT-ID.
    retrieved: list[str] | None = None
    # Both set by EvidenceLog.append; `hash` covers every field except itself and `signature`.
    prev_hash: str | None = Field(None, json_schema_extra=HASH_SCHEMA)
    hash: str | None = Field(None, json_schema_extra=HASH_SCHEMA)
    signature: str | None = None

    @field_validator("model_revision", "output_digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_pattern(DIGEST_RE, value, "must be a digest like 'sha256:<hex>'")

    @field_validator("trace_id")
    @classmethod
    def _trace_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if set(value) == {"0"}:
            raise ValueError("trace_id may not be all zeros (W3C's invalid trace id)")
        return check_pattern(TRACE_ID_RE, value, "must be 32 lowercase hex digits")

    @field_validator("prev_hash", "hash")
    @classmethod
    def _chain_hash(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_pattern(HASH_RE, value,
                             "must be 'sha256:' followed by 64 lowercase hex digits")

    def compute_hash(self) -> str:
        return evidence_hash(self.model_dump(mode="json"))


def evidence_hash(data: Mapping[str, Any]) -> str:
    """The chain hash of a record as JSON: sha256 over it without `hash` and `signature`."""
    return sha256_digest({k: v for k, v in data.items() if k not in ("hash", "signature")})
