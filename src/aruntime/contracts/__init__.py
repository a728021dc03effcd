"""The runtime's versioned contracts: what a request asks for (`aruntime.request/v1`), what
happened to it (`aruntime.evidence/v1`), what a durable run did (`aruntime.run-evidence/v1`) and
what a benchmark claims (`aruntime.claim/v1`).

Each model carries its version in a `schema` field (the Python attribute is `schema_`, because
`BaseModel.schema` is taken); JSON always says `schema`. The JSON Schemas under `schemas/` are
generated from these models by `aruntime schemas` (contracts/export.py) and a test keeps them
from drifting.
"""

from __future__ import annotations

from aruntime.contracts.base import (
    Count,
    NonEmpty,
    Seconds,
    StrictModel,
    UtcDatetime,
    canonical_json,
    sha256_digest,
    validation_message,
)
from aruntime.contracts.claim import (
    PERFORMANCE_FIELDS,
    REGISTRY_FIELDS,
    Baseline,
    ClaimId,
    ClaimLabel,
    ClaimRecord,
    ClaimStatus,
    Direction,
    HistoryEntry,
    LongText,
    Source,
    SourceKind,
)
from aruntime.contracts.decision import DecisionRecord
from aruntime.contracts.evidence import (
    EvidenceRecord,
    PolicyDecision,
    Route,
    Timings,
    Usage,
    evidence_hash,
)
from aruntime.contracts.export import (
    CONTRACTS,
    export_schemas,
    schema_document,
)
from aruntime.contracts.request import (
    SLO,
    ChatMessage,
    Confidentiality,
    Inputs,
    ModelRef,
    RequestContract,
    Sampling,
    WorkloadKind,
)
from aruntime.contracts.run_evidence import RunEvent, RunEvidenceRecord

__all__ = [
    "CONTRACTS", "PERFORMANCE_FIELDS", "REGISTRY_FIELDS", "SLO", "Baseline", "ChatMessage",
    "ClaimId", "ClaimLabel", "ClaimRecord", "ClaimStatus", "Confidentiality", "Count",
    "DecisionRecord", "Direction", "EvidenceRecord", "HistoryEntry", "Inputs", "LongText",
    "ModelRef", "NonEmpty",
    "PolicyDecision", "RequestContract", "Route", "RunEvent", "RunEvidenceRecord", "Sampling",
    "Seconds", "Source", "SourceKind", "StrictModel", "Timings", "Usage", "UtcDatetime",
    "WorkloadKind", "canonical_json", "evidence_hash", "export_schemas", "schema_document",
    "sha256_digest", "validation_message",
]
