"""The claim record, `aruntime.claim/v1`: a published figure with its context, sources and
review date."""

from __future__ import annotations

import math
import re
from datetime import date
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from aruntime.contracts.base import Count, NonEmpty, StrictModel, UtcDatetime, check_pattern
from aruntime.timeutil import parse_rfc3339

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


class Direction(StrEnum):
    """Which way the metric improves: how a reader should take the ratio."""

    HIGHER_IS_BETTER = "higher-is-better"  # throughput: ratio 3.66 reads "3.66x higher"
    LOWER_IS_BETTER = "lower-is-better"  # latency: ratio 0.28 reads "3.60x lower"


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


class Baseline(StrictModel):
    name: NonEmpty
    value: float = Field(gt=0.0)


class Source(StrictModel):
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


class HistoryEntry(StrictModel):
    at: UtcDatetime
    status: ClaimStatus
    note: LongText


# A claim with a `metric` is a performance claim and must carry all of these. `metrics` (the
# secondary figures) stays optional.
PERFORMANCE_FIELDS = (
    "value", "unit", "direction", "baseline", "ratio", "model", "hardware", "runtime_version",
    "workload", "precision", "context", "concurrency", "seed", "duration_s", "percentile",
    "measured_at", "raw_log_sha256",
)
# A claim with an `id` is registered (it lives in `claims/`) and must carry all of these.
REGISTRY_FIELDS = ("sources", "review_by", "status", "history")


class ClaimRecord(StrictModel):
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
    direction: Direction | None = Field(
        default=None, description="whether a higher or a lower value is the better one")
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
        return check_pattern(_MODEL_AT_DIGEST, value, "must be name@revision digest, e.g. "
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

    @property
    def gain(self) -> float:
        """How many times better than the baseline, as a reader says it: the ratio for a
        higher-is-better metric, its inverse for a lower-is-better one."""
        assert self.ratio is not None
        return 1 / self.ratio if self.direction is Direction.LOWER_IS_BETTER else self.ratio

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
