"""The one question every decision point asks: may this principal do this action on this
resource, in this context? `Authorizer.decide` answers it; its `Decision` goes into the evidence.

Default deny; a forbid wins over any permit (Cedar's semantics). In `log-only` mode a denial is
recorded as what it would have been, but the request goes on (`Decision.enforced` is False).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aruntime.policy.identity import Principal


class Action(StrEnum):
    INVOKE_MODEL = "invoke_model"
    LIST_TOOLS = "list_tools"
    CALL_TOOL = "call_tool"
    READ_MEMORY = "read_memory"
    WRITE_MEMORY = "write_memory"
    PUBLISH_SHARED_PREFIX = "publish_shared_prefix"
    APPROVE = "approve"
    READ_EVIDENCE = "read_evidence"
    ADMIN = "admin"
    CHECK_OUTPUT = "check_output"  # the output hook: a decision over a finished output
    # beside the list: starting (or resuming) and cancelling a durable run
    START_RUN = "start_run"
    CANCEL_RUN = "cancel_run"
    # releases and rollouts (adapt/): add, move, start, abort; read; approve a promotion; and
    # the controller's own promotion, which only a signed bundle's explicit rule permits
    MANAGE_RELEASE = "manage_release"
    READ_RELEASE = "read_release"
    APPROVE_RELEASE = "approve_release"
    PROMOTE_UNATTENDED = "promote_unattended"


class Mode(StrEnum):
    ENFORCE = "enforce"
    LOG_ONLY = "log-only"


@dataclass(frozen=True, slots=True)
class Resource:
    """A Cedar entity `ARuntime::<type>::"<id>"` with its attributes (`tenant` where the
    resource belongs to one: a run, a memory scope)."""

    type: str  # "Model", "Tool", "Memory", "Run"
    id: str
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    action: str
    resource: str  # 'ARuntime::Tool::"refund"'
    allowed: bool  # what the policy said
    policy_version: str  # the digest of the policy set in force
    determining: tuple[str, ...] = ()  # the policy ids that decided it
    latency_us: float = 0.0
    mode: Mode = Mode.ENFORCE
    errors: tuple[str, ...] = ()  # policies that failed to evaluate (they never permit)
    cached: bool = False

    @property
    def enforced(self) -> bool:
        """Whether the request must stop here: denied, and the mode enforces."""
        return not self.allowed and self.mode is Mode.ENFORCE

    @property
    def word(self) -> str:
        return "allow" if self.allowed else "deny"

    def evidence(self) -> dict[str, Any]:
        """The shape an evidence record keeps (contracts/evidence.py's PolicyDecision)."""
        return {"policy_version": self.policy_version, "decision": self.word,
                "reasons": list(self.determining), "action": self.action,
                "resource": self.resource, "mode": str(self.mode),
                "latency_us": round(self.latency_us, 1)}


class Authorizer(ABC):
    """Decides requests against the policy in force. Called at each decision point (serve's
    routes, the runner, the MCP server) before the guarded thing happens; never raises for a
    denial (the caller decides what a denial means), only for a request it cannot express."""

    @property
    @abstractmethod
    def version(self) -> str:
        """The digest of the policy set in force now."""

    @abstractmethod
    def decide(self, principal: Principal, action: Action, resource: Resource,
               context: Mapping[str, Any] | None = None) -> Decision: ...
