"""The run evidence record, `aruntime.run-evidence/v1`: what a durable run did, hash-chained.

One record per event of a run (its start and end, each journaled call, each phase of a tool
call, each decision a person made), kept in the journal beside the run. Digests, never payloads:
erasing a run's subject leaves its evidence whole. `prev_hash`, `hash` and `signature` are set
by the chain (evidence/chain.py), under the same rules as the request evidence record's.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from aruntime.contracts.base import DIGEST_RE, HASH_RE, Count, StrictModel, UtcDatetime
from aruntime.contracts.evidence import PolicyDecision
from aruntime.timeutil import utc_now

Digest = Annotated[str, Field(pattern=DIGEST_RE.pattern, description="e.g. 'sha256:<hex>'")]
ChainHash = Annotated[str, Field(pattern=HASH_RE.pattern)]


class RunEvent(StrEnum):
    """What a record says happened. A journaled step's record (`journaled_step`) is written in
    the same transaction as the step's new entry and left unsigned: the run's next signed
    record covers it through the chain, so a step costs one commit and no signature. Every
    other record is signed, so each point a run rests at is signed over all before it."""

    RUN_STARTED = "run_started"
    RUN_SUSPENDED = "run_suspended"
    RUN_COMPLETED = "run_completed"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    # a new entry, by kind and state (journaled steps)
    STEP_DONE = "step_done"
    STEP_ERROR = "step_error"
    MODEL_DONE = "model_done"
    TOOL_INTENT = "tool_intent"
    WAIT_WAITING = "wait_waiting"
    # a tool call moving on from its intent
    TOOL_ATTEMPT = "tool_attempt"
    TOOL_DONE = "tool_done"
    TOOL_ERROR = "tool_error"
    TOOL_RECONCILED = "tool_reconciled"
    TOOL_UNKNOWN = "tool_unknown"
    # people's decisions, and a wait nobody answered in time
    APPROVAL = "approval"
    HUMAN_ANSWER = "human_answer"
    TOOL_RESOLVED = "tool_resolved"
    HUMAN_TIMEOUT = "human_timeout"
    # a call the policy refused before anything ran (a tool call, a model call)
    POLICY_DENIED = "policy_denied"

    @property
    def journaled_step(self) -> bool:
        """Whether this is a journaled step's record: unsigned, covered by the next signed."""
        return self in _JOURNALED_STEPS


_JOURNALED_STEPS = frozenset({RunEvent.STEP_DONE, RunEvent.STEP_ERROR, RunEvent.MODEL_DONE,
                              RunEvent.TOOL_INTENT, RunEvent.WAIT_WAITING,
                              RunEvent.POLICY_DENIED})


class RunEvidenceRecord(StrictModel):
    """One event of a run. Which optional fields an event carries: run_started `flow`,
    `input_digest`; run_suspended `seq`, `suspended_as`; run_completed `result_digest`; an
    entry's record `seq`, `name`, `arg_digest`, `output_digest` or `error`, and for a model
    call `model`, `model_revision`, `request_id`; a tool phase `idempotency_key`, `outcome`; a
    person's decision `by`, `decision`, `approves`, `answer_digest`; run_started the run's
    `tenant` and `principal`; a call or decision the policy decided, its `policy` decision."""

    schema_: Literal["aruntime.run-evidence/v1"] = Field("aruntime.run-evidence/v1",
                                                         alias="schema")
    run_id: str = Field(min_length=1)
    n: Count = Field(description="the record's place in the run's chain, from 0")
    event: RunEvent
    created_at: UtcDatetime = Field(default_factory=utc_now)
    flow: str | None = Field(None, description="MODULE:FUNCTION of the run's flow")
    input_digest: Digest | None = None
    result_digest: Digest | None = None
    suspended_as: Literal["waiting", "unknown"] | None = None
    seq: Count | None = Field(None, description="the journal entry the record is about")
    name: str | None = None
    arg_digest: Digest | None = None
    output_digest: Digest | None = None
    error: str | None = None
    idempotency_key: str | None = None
    model: str | None = Field(None, description="the model that answered, as served")
    model_revision: str | None = None
    request_id: str | None = Field(None, description="its record in the request evidence log")
    outcome: Literal["applied", "failed", "not_applied"] | None = None
    by: str | None = Field(None, description="who decided")
    decision: Literal["approved", "rejected"] | None = None
    approves: str | None = Field(None, description="the digest the decision is bound to")
    answer_digest: Digest | None = None
    tenant: str | None = Field(None, description="the tenant the run acts in")
    principal: str | None = Field(None, description="who started the run")
    policy: PolicyDecision | None = None
    prev_hash: ChainHash | None = None
    hash: ChainHash | None = None
    signature: str | None = None
