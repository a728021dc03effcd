"""The decision record, `aruntime.decision/v1`: one policy decision that no request or run
record carries (a tool listed or called over MCP, a run read), chained like the request log
(OPA's decision log, signed). Digests, never arguments."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aruntime.contracts.base import DIGEST_SCHEMA, HASH_SCHEMA, NonEmpty, StrictModel, UtcDatetime
from aruntime.contracts.evidence import PolicyDecision
from aruntime.timeutil import utc_now


class DecisionRecord(StrictModel):
    schema_: Literal["aruntime.decision/v1"] = Field("aruntime.decision/v1", alias="schema")
    created_at: UtcDatetime = Field(default_factory=utc_now)
    principal: NonEmpty
    tenant: NonEmpty
    via: NonEmpty = Field(description="where it was decided: 'mcp', 'http'")
    decision: PolicyDecision
    arg_digest: str | None = Field(None, description="digest of a tool call's arguments",
                                   json_schema_extra=DIGEST_SCHEMA)
    outcome: str | None = Field(None, description="what followed: 'called', 'refused', ...")
    prev_hash: str | None = Field(None, json_schema_extra=HASH_SCHEMA)
    hash: str | None = Field(None, json_schema_extra=HASH_SCHEMA)
    signature: str | None = None
