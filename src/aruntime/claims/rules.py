"""The rules a claim record must meet, each finding named by file and field.

A record is checked against the `aruntime.claim/v1` JSON Schema (the file other tools read) and
against the pydantic model (which adds what a schema cannot say: the ratio is value / baseline,
the status is the last history entry's); then against the registry: its id is its file name,
its raw log matches its digest, its review date has not passed, its dependencies have not moved.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from aruntime.claims import lifecycle
from aruntime.claims.registry import Registry, sha256_file
from aruntime.contracts import (
    PERFORMANCE_FIELDS,
    ClaimLabel,
    ClaimRecord,
    ClaimStatus,
    schema_document,
)
from aruntime.timeutil import rfc3339

Severity = Literal["error", "warning"]
LABELS = ", ".join(label.value for label in ClaimLabel)


@dataclass(frozen=True, slots=True)
class Violation:
    file: str
    field: str  # a record's field (dotted), or `line N` in a document
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{prefix}{self.file}: {self.field}: {self.message}"


@functools.cache
def _validator() -> Any:
    import jsonschema

    schema = schema_document("aruntime.claim/v1")
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _missing_message(field: str, because: str | None) -> str:
    if field == "label":
        return f"missing: every claim is labelled, one of {LABELS}"
    if field == "sources":
        return ("missing: a registered claim names its primary sources (paper, specification, "
                "repository or documentation, each with a version, commit or date)")
    if because == "metric":
        return (f"missing: a performance claim records every context field "
                f"({', '.join(PERFORMANCE_FIELDS)})")
    return "missing" + (f": required when {because} is present" if because else " (required)")


def schema_violations(file: str, data: Any) -> list[Violation]:
    """The JSON Schema's findings, a missing field reported once, under its own name."""
    found: dict[str, Violation] = {}
    for error in _validator().iter_errors(data):
        where = ".".join(str(p) for p in error.absolute_path)
        if error.validator in ("required", "dependentRequired"):
            wanted = (error.validator_value if error.validator == "required" else
                      [(d, k) for k, deps in error.validator_value.items() if k in error.instance
                       for d in deps])
            for item in wanted:
                name, because = item if isinstance(item, tuple) else (item, None)
                if name not in error.instance:
                    field = f"{where}.{name}" if where else name
                    found.setdefault(field, Violation(file, field,
                                                      _missing_message(name, because)))
            continue
        if error.validator == "anyOf" and error.schema.get("anyOf", [{}])[0].get("required"):
            found.setdefault(where, Violation(file, where, "a source needs a version, commit "
                                              "or date, so the exact thing cited can be found"))
            continue
        found.setdefault(where or "(record)", Violation(file, where or "(record)", error.message))
    return list(found.values())


def model_violations(file: str, data: Any) -> tuple[ClaimRecord | None, list[Violation]]:
    try:
        return ClaimRecord.model_validate(data), []
    except ValidationError as exc:
        return None, [Violation(file, ".".join(str(p) for p in e["loc"]) or "(record)",
                                e["msg"].removeprefix("Value error, ")) for e in exc.errors()]


def record_violations(file: str, data: Any) -> tuple[ClaimRecord | None, list[Violation]]:
    """Schema first; the model's findings when the schema had none (the two would mostly
    repeat each other, in different words)."""
    found = schema_violations(file, data)
    record, more = model_violations(file, data)
    return record, found or more


def registry_violations(registry: Registry, path: Path, record: ClaimRecord, *,
                        now: datetime, known_ids: set[str],
                        running: dict[str, str], strict: bool) -> list[Violation]:
    """What a valid record still owes the registry, at `now` (UTC)."""
    file = registry.relative(path)
    found = []
    if record.id != path.stem:
        found.append(Violation(file, "id", f"is {record.id!r} but the file is {path.name}: "
                                           "a claim's file is named <id>.json"))
    if record.superseded_by is not None and record.superseded_by not in known_ids:
        found.append(Violation(file, "superseded_by", f"names no claim: {record.superseded_by}"))
    if record.is_performance:
        log = registry.log_path(path.stem)
        if not log.is_file():
            found.append(Violation(file, "raw_log_sha256", f"the raw log is not kept at "
                                   f"{registry.relative(log)}", "warning"))
        elif sha256_file(log) != record.raw_log_sha256:
            found.append(Violation(file, "raw_log_sha256",
                                   f"does not match {registry.relative(log)}"))
    if record.status is ClaimStatus.YANKED:
        return found
    advice = f"run `aruntime claims review {record.id}` or yank it"
    if record.superseded_by is not None:
        # No longer published: only a rerun's verdict on it is worth saying, and not loudly.
        if record.status is ClaimStatus.NEEDS_REVIEW:
            ((_, why),) = lifecycle.due([record], now)
            found.append(Violation(file, "status", f"needs-review: {why}; {advice}", "warning"))
        return found
    for claim, why in lifecycle.due([record], now):
        found.append(Violation(file, "review_by" if lifecycle.expired(claim, now) else "status",
                               f"needs-review: {why} (now {rfc3339(now)}); {advice}"))
    for name, was, now_version in lifecycle.dependency_changes(record, running):
        found.append(Violation(file, f"dependencies.{name}",
                               f"needs-review: recorded {was}, running {now_version}; rerun the "
                               f"benchmark or `aruntime claims review {record.id}`",
                               "error" if strict else "warning"))
    return found
