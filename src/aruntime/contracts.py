"""The runtime's versioned contracts: what a request asks for (`aruntime.request/v1`), what
happened (`aruntime.evidence/v1`) and what a benchmark claims (`aruntime.claim/v1`).

Each model carries its version in a `schema` field (the Python attribute is `schema_`, because
`BaseModel.schema` is taken); JSON always says `schema`. The JSON Schemas under `schemas/` are
generated from these models by `aruntime schemas` and a test keeps them from drifting.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from datetime import date, datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from aruntime import __version__
from aruntime.timeutil import parse_rfc3339, rfc3339, utc_now

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
        return value.astimezone(timezone.utc)
    if isinstance(value, str):
        return parse_rfc3339(value)
    raise ValueError("expected an RFC 3339 UTC time ending in 'Z', e.g. '2025-01-02T03:04:05Z'")


UtcDatetime = Annotated[
    datetime,
    PlainValidator(_to_utc),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": "Z$"}),
]

_DIGEST = re.compile(r"^[a-z0-9-]+:[0-9a-f]{16,128}$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_HASH_SCHEMA: dict[str, Any] = {"pattern": _HASH.pattern}
_DIGEST_SCHEMA: dict[str, Any] = {"pattern": _DIGEST.pattern}
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

NonEmpty = Annotated[str, Field(min_length=1, max_length=256)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0.0)]


def _check(pattern: re.Pattern[str], value: str, message: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"{message}; got {value!r}")
    return value


class _Strict(BaseModel):
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


# ---- request contract -------------------------------------------------------------------------


class WorkloadKind(StrEnum):
    COMPLETION = "completion"
    CHAT = "chat"
    AGENT_RUN = "agent_run"
    CONTROL_STEP = "control_step"


class Confidentiality(StrEnum):
    NONE = "none"
    ATTESTED = "attested"  # only attested workers may see the prompt


class ModelRef(_Strict):
    """A model by name and, optionally, revision. Also accepted as the string `name@revision`."""

    name: NonEmpty
    revision: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            name, sep, revision = data.partition("@")
            return {"name": name, "revision": revision} if sep else {"name": name}
        return data

    @field_validator("name", "revision")
    @classmethod
    def _no_at_or_space(cls, value: str | None) -> str | None:
        if value is not None and (value != value.strip() or "@" in value or " " in value):
            raise ValueError("model name and revision may not contain '@' or spaces")
        return value

    def __str__(self) -> str:
        return f"{self.name}@{self.revision}" if self.revision else self.name


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Inputs(_Strict):
    """Exactly one of: prompt text, prompt token ids, chat messages."""

    prompt: str | None = None
    prompt_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Inputs:
        given = [f for f in ("prompt", "prompt_token_ids", "messages") if getattr(self, f)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one non-empty input: prompt, prompt_token_ids or messages"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class Sampling(_Strict):
    """The same bounds as the engine's SamplingParams, checked at the edge."""

    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    seed: int | None = None
    stop: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = []
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = []
    n: int = Field(1, ge=1, le=128)
    logprobs: int | None = Field(None, ge=0, le=20)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_non_empty(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must be non-empty")
        return value


class SLO(_Strict):
    """Latency targets; the router and scheduler treat them as goals, not guarantees."""

    ttft_ms: float | None = Field(None, gt=0.0, description="time to first token")
    tpot_ms: float | None = Field(None, gt=0.0, description="time per output token")


class RequestContract(_Strict):
    schema_: Literal["aruntime.request/v1"] = Field("aruntime.request/v1", alias="schema")
    id: Annotated[str, Field(min_length=1, max_length=128)]
    tenant: str = "default"
    principal: NonEmpty | None = None
    kind: WorkloadKind
    model: ModelRef
    inputs: Inputs
    sampling: Sampling = Field(default_factory=Sampling)
    slo: SLO | None = None
    deadline: UtcDatetime | None = None
    confidentiality: Confidentiality = Confidentiality.NONE
    idempotency_key: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    governance_tags: list[str] = []
    trace_context: str | None = Field(
        None,
        description="W3C traceparent header value",
        json_schema_extra={"pattern": _TRACEPARENT.pattern},
    )
    stream: bool = False
    # Leading prompt tokens published to the shared KV namespace on purpose (a common system
    # prompt): other tenants may reuse their blocks. Everything else stays the tenant's own.
    shared_prefix_tokens: Annotated[int, Field(ge=0)] = 0

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("id may not contain whitespace or control characters")
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return _check(_NAME, value, "must be 1-64 of [A-Za-z0-9_.:-], starting alnum")

    @field_validator("governance_tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            _check(_NAME, tag, "each tag must be 1-64 of [A-Za-z0-9_.:-], starting alnum")
        return value

    @field_validator("trace_context")
    @classmethod
    def _traceparent(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _TRACEPARENT.match(value)
        if (
            match is None
            or match[1] == "ff"
            or set(match[2]) == {"0"}
            or set(match[3]) == {"0"}
        ):
            raise ValueError(
                "trace_context must be a W3C traceparent like "
                f"'00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>'; got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _inputs_fit_kind(self) -> RequestContract:
        if self.kind is WorkloadKind.CHAT and self.inputs.messages is None:
            raise ValueError("a chat request needs inputs.messages")
        if self.kind is WorkloadKind.COMPLETION and self.inputs.messages is not None:
            raise ValueError("a completion request needs inputs.prompt or inputs.prompt_token_ids")
        return self


# ---- evidence record --------------------------------------------------------------------------


class Route(_Strict):
    worker: NonEmpty
    cached_tokens_predicted: Count | None = None
    cached_tokens_used: Count | None = None


class PolicyDecision(_Strict):
    policy_version: NonEmpty
    decision: Literal["allow", "deny"]
    reasons: list[str] = []


class Timings(_Strict):
    queue_s: Seconds | None = None
    ttft_s: Seconds | None = None
    tpot_s: Seconds | None = None
    e2e_s: Seconds | None = None


class Usage(_Strict):
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    cached_tokens: Count = 0

    @model_validator(mode="after")
    def _cached_within_prompt(self) -> Usage:
        if self.cached_tokens > self.prompt_tokens:
            raise ValueError("cached_tokens cannot exceed prompt_tokens")
        return self


class EvidenceRecord(_Strict):
    """What happened to one request. Holds digests, never content: erasing the salt behind
    `output_digest` unlinks it from the outputs without breaking the hash chain."""

    schema_: Literal["aruntime.evidence/v1"] = Field("aruntime.evidence/v1", alias="schema")
    request_id: NonEmpty
    tenant: NonEmpty
    created_at: UtcDatetime = Field(default_factory=utc_now)
    model: NonEmpty
    model_revision: str = Field(
        description="digest, e.g. 'sha256:<hex>'", json_schema_extra=_DIGEST_SCHEMA
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
        None, description="salted digest of the outputs", json_schema_extra=_DIGEST_SCHEMA
    )
    # Both set by EvidenceLog.append; `hash` covers every field except itself and `signature`.
    prev_hash: str | None = Field(None, json_schema_extra=_HASH_SCHEMA)
    hash: str | None = Field(None, json_schema_extra=_HASH_SCHEMA)
    signature: str | None = None

    @field_validator("model_revision", "output_digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check(_DIGEST, value, "must be a digest like 'sha256:<hex>'")

    @field_validator("prev_hash", "hash")
    @classmethod
    def _chain_hash(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check(_HASH, value, "must be 'sha256:' followed by 64 lowercase hex digits")

    def compute_hash(self) -> str:
        return evidence_hash(self.model_dump(mode="json"))


def evidence_hash(data: Mapping[str, Any]) -> str:
    """The chain hash of a record as JSON: sha256 over it without `hash` and `signature`."""
    return sha256_digest({k: v for k, v in data.items() if k not in ("hash", "signature")})


# ---- claim record -----------------------------------------------------------------------------


class ClaimLabel(StrEnum):
    PRODUCTION_IMPLEMENTATION = "production-implementation"
    RESEARCH_PROTOTYPE = "research-prototype"
    EDITORIAL_SYNTHESIS = "editorial-synthesis"
    FORECAST = "forecast"


class ClaimStatus(StrEnum):
    ACTIVE = "active"
    NEEDS_REVIEW = "needs-review"
    YANKED = "yanked"


class SourceKind(StrEnum):
    PAPER = "paper"
    SPECIFICATION = "specification"
    REPOSITORY = "repository"
    DOCUMENTATION = "documentation"


_CLAIM_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_MODEL_AT_DIGEST = re.compile(r"^[^@\s]+@[a-z0-9-]+:[0-9a-f]{16,128}$")
LongText = Annotated[str, Field(min_length=1, max_length=2000)]
ClaimId = Annotated[str, Field(max_length=96, pattern=_CLAIM_ID.pattern)]


def _absent_not_null(schema: dict[str, Any], **extra: Any) -> None:
    """Claim records are written without nulls (`exclude_none`): in their JSON an optional field
    is absent, and the schema says so rather than accepting `null`."""
    for prop in schema["properties"].values():
        options = prop.get("anyOf", [])
        if {"type": "null"} in options:
            options.remove({"type": "null"})
            prop.pop("default", None)
            if len(options) == 1:
                prop.update(options.pop())
                del prop["anyOf"]
    schema.update(extra)


class Baseline(_Strict):
    name: NonEmpty
    value: float = Field(gt=0.0)


class Source(_Strict):
    """A primary source, pinned: a paper, specification, repository or documentation page with a
    version, commit or date, so a reader can find the exact thing that was cited."""

    kind: SourceKind
    name: NonEmpty
    url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    version: NonEmpty | None = None
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,64}$")
    date: str | None = Field(default=None, description="YYYY-MM-DD", pattern=r"^\d{4}-\d{2}-\d{2}$")

    model_config = ConfigDict(json_schema_extra=lambda schema: _absent_not_null(schema, anyOf=[
        {"required": ["version"]}, {"required": ["commit"]}, {"required": ["date"]}]))

    @field_validator("date")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        if value is not None:
            date.fromisoformat(value)  # a ValueError names the bad day
        return value

    @model_validator(mode="after")
    def _pinned(self) -> Source:
        if self.version is None and self.commit is None and self.date is None:
            raise ValueError(f"source {self.name!r} needs a version, commit or date")
        return self


class HistoryEntry(_Strict):
    at: UtcDatetime
    status: ClaimStatus
    note: LongText


# A claim with a `metric` is a performance claim and must carry all of these. `metrics` (the
# secondary figures) stays optional.
PERFORMANCE_FIELDS = (
    "value", "unit", "baseline", "ratio", "model", "hardware", "runtime_version", "workload",
    "precision", "context", "concurrency", "seed", "duration_s", "percentile", "measured_at",
    "raw_log_sha256",
)
# A claim with an `id` is registered (it lives in `claims/`) and must carry all of these.
REGISTRY_FIELDS = ("sources", "review_by", "status", "history")


class ClaimRecord(_Strict):
    """One published claim. A benchmark writes the measurement (label, statement and the
    performance fields, with the raw log's digest); `aruntime claims add` registers it, adding
    the id, sources, review date, status and history. Optional fields are left out of the JSON
    rather than written as null (`model_dump(exclude_none=True)`)."""

    # Which fields a performance or a registered claim needs is stated in the schema itself.
    model_config = ConfigDict(json_schema_extra=lambda schema: _absent_not_null(
        schema, dependentRequired={"metric": list(PERFORMANCE_FIELDS), "value": ["metric"],
                                   "id": list(REGISTRY_FIELDS)}))

    schema_: Literal["aruntime.claim/v1"] = Field("aruntime.claim/v1", alias="schema")
    id: ClaimId | None = None
    label: ClaimLabel
    statement: LongText
    sources: list[Source] | None = Field(default=None, min_length=1)
    # -- the measurement: a performance claim has every one of these but `metrics`
    metric: NonEmpty | None = None
    value: float | None = None
    unit: NonEmpty | None = None
    baseline: Baseline | None = None
    ratio: float | None = Field(default=None, description="value / baseline.value")
    metrics: dict[str, float | int | str] | None = None
    model: str | None = Field(default=None, description="name@revision digest",
                              json_schema_extra={"pattern": _MODEL_AT_DIGEST.pattern})
    hardware: NonEmpty | None = None
    runtime_version: NonEmpty | None = None
    workload: NonEmpty | None = None
    precision: NonEmpty | None = None
    context: Count | None = Field(default=None, description="longest context, in tokens")
    concurrency: int | None = Field(default=None, ge=1)
    seed: int | None = None
    duration_s: float | None = Field(default=None, gt=0.0)
    percentile: str | None = Field(
        default=None, pattern=r"^(p\d{1,2}(\.\d{1,3})?|p100|mean|min|max)$",
        description="which statistic of the repeated runs `value` is: p50, p99, mean, ...")
    measured_at: str | None = Field(
        default=None, description="RFC 3339 UTC, ending in 'Z'",
        json_schema_extra={"format": "date-time", "pattern": "Z$"},
    )
    raw_log_sha256: str | None = Field(
        default=None, description="sha256 of the raw log",
        json_schema_extra={"pattern": "^[0-9a-f]{64}$"},
    )
    # -- the registry's part
    dependencies: dict[str, NonEmpty] | None = Field(
        default=None, description="versions the figure depends on (python, torch, ...)")
    review_by: UtcDatetime | None = None
    status: ClaimStatus | None = None
    superseded_by: ClaimId | None = None
    history: list[HistoryEntry] | None = Field(default=None, min_length=1)

    @field_validator("measured_at")
    @classmethod
    def _utc(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rfc3339(value)
        return value

    @field_validator("raw_log_sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError(f"must be 64 lowercase hex digits; got {value!r}")
        return value

    @field_validator("model")
    @classmethod
    def _model_at_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check(_MODEL_AT_DIGEST, value, "must be name@revision digest, e.g. "
                      "'demo-small@sha256:<hex>', so the exact weights are named")

    @model_validator(mode="after")
    def _complete(self) -> ClaimRecord:
        if self.metric is not None or self.value is not None:
            missing = [f for f in ("metric", *PERFORMANCE_FIELDS) if getattr(self, f) is None]
            if missing:
                raise ValueError("a performance claim must record every context field; "
                                 f"missing: {', '.join(missing)}")
            assert self.value is not None and self.baseline is not None  # for mypy
            if not math.isclose(self.ratio or 0.0, self.value / self.baseline.value,
                                rel_tol=1e-9):
                raise ValueError("ratio must be value / baseline.value")
        if self.id is not None:
            missing = [f for f in REGISTRY_FIELDS if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a registered claim needs {', '.join(missing)}")
            assert self.history is not None
            if self.history[-1].status != self.status:
                raise ValueError(f"status {self.status} differs from the last history entry's "
                                 f"{self.history[-1].status}")
            if any(a.at > b.at for a, b in zip(self.history, self.history[1:], strict=False)):
                raise ValueError("history must be in time order")
        elif self.superseded_by is not None:
            raise ValueError("only a registered claim (one with an id) can be superseded")
        return self

    @property
    def is_performance(self) -> bool:
        return self.metric is not None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# ---- JSON Schema export and the `aruntime schemas` command --------------------------------------

CONTRACTS: dict[str, type[_Strict]] = {
    "aruntime.request/v1": RequestContract,
    "aruntime.evidence/v1": EvidenceRecord,
    "aruntime.claim/v1": ClaimRecord,
}


def schema_document(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one contract, with `$id` and `title`."""
    doc = CONTRACTS[name].model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["$id"] = f"urn:aruntime:schema:{name}"
    doc["title"] = name
    return doc


def export_schemas(directory: Path) -> list[Path]:
    """Write one `<name with '/' as '.'>.json` per contract; the bytes depend only on the models."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CONTRACTS:
        path = directory / (name.replace("/", ".") + ".json")
        text = json.dumps(schema_document(name), indent=2, sort_keys=True, ensure_ascii=False)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)  # readers never see a half-written schema
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("schemas"), help="directory to write (default: ./schemas)"
    )


def run(args: argparse.Namespace) -> int:
    from aruntime.cli import UsageError

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a directory")
    for path in export_schemas(args.out):
        print(path)
    return 0
