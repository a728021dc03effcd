"""Claim records: one JSON document per published figure, with the evidence to check it.

The record names what was measured (metric, value, unit), what it was compared with (a baseline
measured in the same run), on what (model revision, hardware, versions, precision) and how
(workload, seed, concurrency, context); `raw_log_sha256` ties it to the exact text the benchmark
printed, which is written next to the record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aruntime
from aruntime.timeutil import rfc3339, utc_now

SCHEMA = "aruntime.claim/v1"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def runtime_version() -> str:
    import torch

    return f"aruntime {aruntime.__version__}; torch {torch.__version__}"


def build_claim(
    *,
    statement: str,
    metric: str,
    value: float,
    unit: str,
    direction: str,
    baseline_name: str,
    baseline_value: float,
    metrics: dict[str, float | int | str],
    model: str,
    hardware: str,
    workload: str,
    precision: str,
    context: int,
    concurrency: int,
    seed: int,
    duration_s: float,
    percentile: str,
    raw_log: str,
    label: str = "production-implementation",
    measured_at: str | None = None,
) -> dict[str, Any]:
    """Assemble a claim record; the ratio is always value / baseline, never passed in.

    `direction` is "higher-is-better" or "lower-is-better"; `model` is `name@revision`;
    `hardware`, `workload` are one-line descriptions (the contract
    keeps them under 256 characters; the details belong in the raw log); `percentile` says which
    statistic of the repeated runs `value` is (`p50` for the median round)."""
    record = {
        "schema": SCHEMA,
        "label": label,
        "statement": statement,
        "metric": metric,
        "value": value,
        "unit": unit,
        "direction": direction,
        "baseline": {"name": baseline_name, "value": baseline_value},
        "ratio": value / baseline_value if baseline_value else float("nan"),
        "metrics": metrics,
        "model": model,
        "hardware": hardware,
        "runtime_version": runtime_version(),
        "workload": workload,
        "precision": precision,
        "context": context,
        "concurrency": concurrency,
        "seed": seed,
        "duration_s": duration_s,
        "percentile": percentile,
        "measured_at": measured_at or rfc3339(utc_now()),
        "raw_log_sha256": sha256_text(raw_log),
    }
    return validate(record)


@dataclass(frozen=True, slots=True)
class ClaimSpec:
    """What a benchmark claims, before the raw log that backs it exists: `build_claim`'s fields
    but the log (and the measuring time, taken when the record is built)."""

    statement: str
    metric: str
    value: float
    unit: str
    direction: str  # "higher-is-better" or "lower-is-better"
    baseline_name: str
    baseline_value: float
    metrics: dict[str, float | int | str]
    model: str  # name@revision
    hardware: str
    workload: str
    precision: str
    context: int
    concurrency: int
    seed: int
    duration_s: float
    percentile: str  # which statistic of the repeated runs `value` is

    def record(self, raw_log: str) -> dict[str, Any]:
        return build_claim(
            statement=self.statement, metric=self.metric, value=self.value, unit=self.unit,
            direction=self.direction, baseline_name=self.baseline_name,
            baseline_value=self.baseline_value, metrics=self.metrics, model=self.model,
            hardware=self.hardware, workload=self.workload, precision=self.precision,
            context=self.context, concurrency=self.concurrency, seed=self.seed,
            duration_s=self.duration_s, percentile=self.percentile, raw_log=raw_log)


def validate(record: dict[str, Any]) -> dict[str, Any]:
    """Check the record against the ClaimRecord contract.

    Returns the record as the contract serialises it (so the file matches the schema exactly);
    a record that does not fit raises pydantic's ValidationError. It has no id yet: `aruntime
    claims add` registers it."""
    from aruntime.contracts import ClaimRecord

    return ClaimRecord.model_validate(record).to_json()


def write_claim(path: str | Path, record: dict[str, Any], raw_log: str) -> tuple[Path, Path]:
    """Write the record and, beside it, the raw log whose digest it carries."""
    path = Path(path)
    if sha256_text(raw_log) != record["raw_log_sha256"]:
        raise ValueError("raw log does not match the record's raw_log_sha256")
    path.parent.mkdir(parents=True, exist_ok=True)
    log_path = path.with_name(path.name + ".log")
    log_path.write_text(raw_log, encoding="utf-8")
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path, log_path


def model_ref(model_dir: Path) -> str:
    """`name@revision` of a checkpoint directory or GGUF file, as claims name their model (the
    name it is served under)."""
    from aruntime.engine.default_model import served_name
    from aruntime.engine.loader import load_checkpoint

    return f"{served_name(model_dir)}@{load_checkpoint(model_dir).revision}"
