"""The decision points of an API request: the tenant it acts in (the credential's), the model
it invokes, the shared KV prefix it would publish to other tenants, and — once its output is
whole — the output hook, with a detector's findings in `context.findings`. Each is one call to
serve/auth.py's `decide`; the decisions ride on the request into its evidence record."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from aruntime.adapt.artifact import Kind
from aruntime.policy.decision import Action, Resource
from aruntime.policy.detectors import findings
from aruntime.serve import protocol as p
from aruntime.serve.auth import acting, decide, tenant_for
from aruntime.serve.errors import PermissionDeniedError
from aruntime.serve.generation import Generation
from aruntime.serve.release_uses import assign_served, session_of
from aruntime.serve.state import ServerState


def model_resource(state: ServerState) -> Resource:
    return Resource("Model", state.model_name, {"name": state.model_name})


def request_context(state: ServerState, ext: dict[str, Any]) -> dict[str, Any]:
    """The request's facts a policy may test (what is absent is left out: Cedar has no null)."""
    ctx: dict[str, Any] = {"model": state.model_name}
    for name in ("slo", "confidentiality", "shared_prefix_tokens"):
        if ext.get(name) is not None:
            ctx[name] = ext[name]
    return ctx


def decide_request(request: Request, state: ServerState, req: p._GenerationRequest) -> None:
    """Settle the tenant (403 when the body claims another), then decide the model call and any
    shared-prefix publication (403 on an enforced denial)."""
    ext = dict(req.aruntime or {})
    claimed = ext.get("tenant")
    ext["tenant"] = tenant_for(request, claimed if isinstance(claimed, str) else None)
    who = acting(request)
    if who.authenticated:
        ext["principal"] = who.id  # the contract records who asked, not who the body says
    req.aruntime = ext
    _check_confidentiality(request, state, ext.get("confidentiality"))
    assign_served(state, request, ext["tenant"], session_of(request, req))
    ctx = request_context(state, ext)
    decide(request, Action.INVOKE_MODEL, model_resource(state), ctx)
    if ext.get("shared_prefix_tokens"):
        decide(request, Action.PUBLISH_SHARED_PREFIX, model_resource(state), ctx)


def _check_confidentiality(request: Request, state: ServerState, level: Any) -> None:
    """A request that asks for confidentiality must come sealed to an attested key, and one
    that requires hardware is refused by a software boundary (403 in OpenAI's shape)."""
    if level in (None, "none"):
        return
    if not getattr(request.state, "sealed", False):
        raise PermissionDeniedError(
            f"a request marked confidentiality {level!r} must be sealed to this server's "
            "attested key: GET /v1/attestation, then POST /v1/confidential/chat/completions",
            param="aruntime.confidentiality", code="confidentiality_unmet")
    boundary = state.boundary
    if level == "required" and (boundary is None or not boundary.hardware):
        raise PermissionDeniedError(
            "confidentiality 'required' needs a hardware-attested boundary; this server's "
            f"attester is {boundary.attester.type if boundary else 'none'}",
            param="aruntime.confidentiality", code="confidentiality_unmet")


def check_output(state: ServerState, gen: Generation) -> None:
    """The output hook, once per request whose output is whole; 403 withholds an output the
    policy forbids (a stream's is already sent: its last event says so instead)."""
    if gen.principal is None or gen.output_checked:
        return  # a flow's model call: its run's decisions cover it
    gen.output_checked = True
    found: set[str] = set()
    for c in gen.choices:
        found |= findings(c.text)
    decision = (gen.uses.served(Kind.POLICY) or state.authorizer).decide(
        gen.principal, Action.CHECK_OUTPUT, model_resource(state),
        {"tenant": gen.tenant, "model": state.model_name, "findings": sorted(found)})
    gen.decisions.append(decision)
    if decision.enforced:
        raise PermissionDeniedError(
            f"policy withholds the output ({', '.join(sorted(found)) or 'no findings'}): "
            f"{', '.join(decision.determining) or 'default deny'}", code="output_denied")
