"""One decision explained, what `aruntime policy explain` prints: the answer, the policies that
determined it (Cedar's ids, with their `@id` annotations), the policies that failed to evaluate
and the version of the set. The request is built as a decision point builds it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cedarpy

from aruntime.policy.cedar_authorizer import (
    CedarPolicy,
    cedar_request,
    context_of,
    entities_of,
)
from aruntime.policy.decision import Action, Resource
from aruntime.policy.identity import Principal


@dataclass(frozen=True, slots=True)
class Explanation:
    allowed: bool
    determining: tuple[tuple[str, str | None], ...]  # (Cedar's policy id, its @id or None)
    errors: tuple[str, ...]
    version: str
    context: Mapping[str, Any]  # as decided, with the tenant and the minute filled in

    def lines(self) -> list[str]:
        reasons = [f'{pid} (@id("{name}"))' if name is not None else pid
                   for pid, name in self.determining]
        why = ", ".join(reasons) if reasons else (
            "none: no permit applies (default deny)" if not self.allowed else "none")
        return [f"decision: {'allow' if self.allowed else 'deny'}", f"determining: {why}",
                f"errors: {'; '.join(self.errors) if self.errors else 'none'}",
                f"version: {self.version}"]


def explain(policy: CedarPolicy, principal: Principal, action: Action, resource: Resource,
            context: Mapping[str, Any] | None = None) -> Explanation:
    ctx = context_of(principal, context)
    result = cedarpy.is_authorized(cedar_request(principal, action, resource, ctx),
                                   policy.policies, entities_of(principal, resource))
    names = result.diagnostics.id_annotations_by_reason or {}
    ids = sorted(result.diagnostics.reasons, key=lambda p: (len(p), p))  # policy2 < policy10
    determining = tuple((pid, names.get(pid)) for pid in ids)
    return Explanation(bool(result.allowed), determining,
                       tuple(str(e) for e in result.diagnostics.errors), policy.version, ctx)
