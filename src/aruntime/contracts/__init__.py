"""The runtime's versioned contracts: what a request asks for (`aruntime.request/v1`), what
happened (`aruntime.evidence/v1`) and what a benchmark claims (`aruntime.claim/v1`).

Each model carries its version in a `schema` field (the Python attribute is `schema_`, because
`BaseModel.schema` is taken); JSON always says `schema`. The JSON Schemas under `schemas/` are
generated from these models by `aruntime schemas` (contracts/export.py) and a test keeps them
from drifting.
"""

from __future__ import annotations

from aruntime.contracts.base import (  # noqa: F401 - re-exported
    Count,
    NonEmpty,
    Seconds,
    StrictModel,
    UtcDatetime,
    canonical_json,
    sha256_digest,
    validation_message,
)
from aruntime.contracts.claim import (  # noqa: F401 - re-exported
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
from aruntime.contracts.evidence import (  # noqa: F401 - re-exported
    EvidenceRecord,
    PolicyDecision,
    Route,
    Timings,
    Usage,
    evidence_hash,
)
from aruntime.contracts.export import (  # noqa: F401 - re-exported
    CONTRACTS,
    export_schemas,
    schema_document,
)
from aruntime.contracts.request import (  # noqa: F401 - re-exported
    SLO,
    ChatMessage,
    Confidentiality,
    Inputs,
    ModelRef,
    RequestContract,
    Sampling,
    WorkloadKind,
)
