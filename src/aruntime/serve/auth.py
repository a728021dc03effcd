"""The server's side of identity and policy: who is asking (once per request, from its
`Authorization` header) and the one call a route makes at a decision point.

`principal(request)` is a FastAPI dependency; `decide(...)` asks the authorizer, keeps the
decision on the request (its evidence record lists them all) and raises 403 for an enforced
denial. A route never checks a role itself (STYLE 11).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fastapi import Request

from aruntime.adapt.artifact import Kind
from aruntime.policy.decision import Action, Decision, Resource
from aruntime.policy.identity import AuthError, ForbiddenError, Principal
from aruntime.serve.errors import AuthenticationError, PermissionDeniedError
from aruntime.serve.state import ServerState, state_of


def principal(request: Request) -> Principal:
    """The request's principal, authenticated on first use; 401 in OpenAI's shape."""
    found: Principal | None = getattr(request.state, "principal", None)
    if found is None:
        try:
            found = state_of(request).authenticator.authenticate(
                request.headers.get("authorization"))
        except AuthError as exc:
            raise AuthenticationError(str(exc)) from None
        request.state.principal = found
    return found


async def require_principal(request: Request) -> Principal:
    """The routes' dependency: on the event loop (the check is one indexed read or one
    signature), not a thread-pool hop per request."""
    return principal(request)


def tenant_for(request: Request, claimed: str | None) -> str:
    """The tenant the request acts in (the credential's); 403 when the body names another.
    Remembered on the request: its decisions are taken in that tenant."""
    try:
        tenant = principal(request).acting_for(claimed)
    except ForbiddenError as exc:
        raise PermissionDeniedError(str(exc), param="aruntime.tenant",
                                    code="tenant_mismatch") from None
    request.state.tenant = tenant
    return tenant


def acting(request: Request) -> Principal:
    """The principal as it acts in this request: without authentication (`--auth none`) the
    anonymous principal takes the tenant the request named, as requests did before identities;
    an authenticated principal is always its credential's."""
    who = principal(request)
    tenant = getattr(request.state, "tenant", None)
    if who.authenticated or tenant is None or tenant == who.tenant:
        return who
    return dataclasses.replace(who, tenant=tenant)


def decisions(request: Request) -> list[Decision]:
    """The decisions taken for this request so far, in order (for its evidence record)."""
    found: list[Decision] | None = getattr(request.state, "decisions", None)
    if found is None:
        found = request.state.decisions = []
    return found


def record_decision(state: ServerState, who: Principal, decision: Decision, via: str,
                    arg_digest: str | None = None) -> None:
    """One `aruntime.decision/v1` record in the signed decision log."""
    if state.decisions is not None:
        state.decisions.append({"principal": who.id, "tenant": who.tenant, "via": via,
                                "decision": decision.evidence(), "arg_digest": arg_digest,
                                "outcome": "refused" if decision.enforced else "allowed"})


def decide(request: Request, action: Action, resource: Resource,
           context: Mapping[str, Any] | None = None, *, enforce: bool = True,
           log: bool = False, via: str = "http") -> Decision:
    """Ask the policy; record the decision; 403 when it denies and the mode enforces (unless
    `enforce` is False: a filter, such as listing only the permitted models). The decision log
    gets it when `log` says no other record will (a read), and whenever it refuses: a refused
    request writes no evidence record of its own. `via` names the decision point in the
    records (the console's own reads say "console", so an operator can tell them apart)."""
    who = acting(request)
    state = state_of(request)
    uses = getattr(request.state, "uses", None)  # a policy rollout's assignment, if any
    use = None if uses is None else uses.releases.get(Kind.POLICY)
    decision = (use.value if use else state.authorizer).decide(who, action, resource, context)
    if uses is not None and use is not None and use.shadow is not None:  # never enforced
        uses.shadow_refused |= not use.shadow.decide(who, action, resource, context).allowed
    decisions(request).append(decision)
    state.recent_decisions.add(who, decision, via)
    if log or decision.enforced:
        record_decision(state, who, decision, via)
    if enforce and decision.enforced:
        raise PermissionDeniedError(
            f"policy denies {action} on {decision.resource} to {who.id} (tenant {who.tenant})",
            code="policy_denied")
    return decision
