"""The releases one request is served with, as far as a rollout may move them: for each kind,
its assignment — the version that serves the user, the rollout it belongs to, and the version a
shadow rollout mirrors it to. The server's own releases (`serve --release policy=NAME` and
`route=NAME`) are assigned when the request is admitted, the ones it names itself (a prompt,
`aruntime.prompt`; a retrieval config, `aruntime.retrieval`) when its messages are read. When
the request ends it gives each rollout one sample of the version that served it.

A shadow policy is decided beside the one in force, never enforced: what it would have refused
is the candidate's sample. A shadow of any other kind answers a copy of the request after the
user's answer is complete (serve/openai_routes.py), which is dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from aruntime.adapt.artifact import Kind, ReleaseError
from aruntime.adapt.controller import Assignment
from aruntime.adapt.request_releases import Use
from aruntime.adapt.retrieval import Retriever
from aruntime.adapt.samples import Sample
from aruntime.contracts import EvidenceRecord
from aruntime.serve.errors import InvalidRequestError, ReleaseUnavailableError
from aruntime.serve.released_policy import ReleasedPolicy

if TYPE_CHECKING:
    from aruntime.serve import protocol as p
    from aruntime.serve.generation import Generation
    from aruntime.serve.state import ServerState


@dataclass
class Uses:
    # by kind: the assignment and what serves it (a policy version's authorizer, a router
    # policy, a model version's engine, a prompt's text, a retriever), with a shadow's candidate
    releases: dict[Kind, Use[Any]] = field(default_factory=dict)
    shadow_refused: bool = False  # whether a shadow policy's candidate would have refused it

    @property
    def assigned(self) -> dict[Kind, Assignment]:
        return {kind: use.assignment for kind, use in self.releases.items()}

    def served(self, kind: Kind, shadow: bool = False) -> Any:
        """What serves `kind` for the request (or, `shadow`, its mirrored copy); None when
        the kind is not a release here."""
        use = self.releases.get(kind)
        return None if use is None else use.at(shadow)

    def mirrored(self) -> bool:
        """Whether a copy of the request goes to a candidate (a shadow of a kind that answers)."""
        return any(a.shadow is not None for k, a in self.assigned.items() if k is not Kind.POLICY)


def uses_of(request: Request) -> Uses:
    found: Uses | None = getattr(request.state, "uses", None)
    if found is None:
        found = request.state.uses = Uses()
    return found


def session_of(request: Request, req: p._GenerationRequest) -> str:
    """What keeps a conversation on one version: `aruntime.session`, else `user`, else the
    request's own id (each request then on its own)."""
    extra = req.aruntime or {}
    session = extra.get("session") or req.user or getattr(request.state, "request_id", None)
    return str(session or id(request))


def assign_served(state: ServerState, request: Request, tenant: str, session: str) -> None:
    """The versions of the server's own releases that serve this request: the policy that
    decides it and the router policy that places it (and a shadow's candidates beside them)."""
    uses = uses_of(request)
    policy = state.authorizer
    try:
        if isinstance(policy, ReleasedPolicy):
            uses.releases[Kind.POLICY] = _use(state, policy.name, policy.at, tenant, session)
        if state.route is not None:
            uses.releases[Kind.ROUTE] = _use(state, state.route.name, state.route.at, tenant,
                                             session)
        if state.models is not None:
            _assign_model(state, uses, tenant, session)
    except ReleaseError as exc:  # the version assigned cannot serve, and nothing else may
        record_failure(state, uses)
        raise ReleaseUnavailableError(f"this request cannot be served: {exc}") from None


def _use(state: ServerState, name: str, at: Callable[[str], Any], tenant: str,
         session: str) -> Use[Any]:
    """Release `name`'s assignment, with what serves its version (and a shadow's candidate)."""
    a = state.adaptation.assign(name, tenant, session)
    return Use(a, at(a.version), at(a.shadow) if a.shadow is not None else None)


def _assign_model(state: ServerState, uses: Uses, tenant: str, session: str) -> None:
    """The engine of the model version assigned; stable's, and no sample, while a candidate's
    engine is not ready yet (traffic shifts only to a candidate that can take it)."""
    models = state.models
    assert models is not None
    a = state.adaptation.assign(models.name, tenant, session)
    engine = models.ready(a.version)
    if engine is None:
        engine = models.primary()
        a = Assignment(models.name, engine.version)
    shadow = models.ready(a.shadow) if a.shadow is not None else None
    if shadow is None and a.shadow is not None:
        a = dataclasses.replace(a, shadow=None)
    uses.releases[Kind.MODEL] = Use(a, engine, shadow)


def resolve_named(state: ServerState, request: Request, tenant: str,
                  req: p._GenerationRequest) -> None:
    """The releases a request names itself (`aruntime.prompt`, `aruntime.retrieval`)."""
    extra = req.aruntime or {}
    uses = uses_of(request)
    for kind, releases in ((Kind.PROMPT, state.prompts), (Kind.RETRIEVAL, state.retrievals)):
        ref, param = extra.get(kind.value), f"aruntime.{kind.value}"
        if ref is None:
            continue
        if not isinstance(ref, str) or not ref:
            raise InvalidRequestError(f"{param} is NAME or NAME@ALIAS", param=param)
        try:
            use = releases.resolve(ref, tenant, session_of(request, req))
        except ReleaseError as exc:
            raise InvalidRequestError(str(exc), param=param, code="release_unavailable") from None
        uses.releases[kind] = use


def with_releases(messages: list[dict[str, Any]], named: Mapping[Kind, Use[Any]],
                  shadow: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """The messages with the released prompt's text and the passages retrieved for the last
    user message set before them, as one system message; and the passages' ids."""
    parts, ids = [], []
    if Kind.PROMPT in named:
        parts.append(str(named[Kind.PROMPT].at(shadow)))
    if Kind.RETRIEVAL in named:
        retriever: Retriever = named[Kind.RETRIEVAL].at(shadow)
        query = next((str(m.get("content") or "") for m in reversed(messages)
                      if m.get("role") == "user"), "")
        passages = retriever.search(query)
        if passages:
            parts.append(retriever.context(passages))
            ids = [f"{named[Kind.RETRIEVAL].assignment.name}/{p.id}" for p in passages]
    if not parts:
        return messages, ids
    return [{"role": "system", "content": "\n\n".join(parts)}, *messages], ids


def released(state: ServerState, uses: Uses) -> dict[str, str]:
    """What serves a request, each named as a release (kind -> name@version)."""
    out = {"model": f"{state.model_name}@{(uses.served(Kind.MODEL) or state).info.revision}"}
    policy = state.authorizer
    if Kind.POLICY not in uses.assigned:  # decided outside a request's assignment (a flow's)
        out["policy"] = (f"{policy.name}@{policy.stable()}" if isinstance(policy, ReleasedPolicy)
                         else f"policy@{policy.version}")
    router = getattr(state.client, "policy", None)
    if isinstance(router, str):
        out["route"] = f"router@{router}"
    for kind, a in uses.assigned.items():
        out[kind.value] = f"{a.name}@{a.version}"
    return out


def record_sample(state: ServerState, gen: Generation, record: EvidenceRecord) -> None:
    """One sample to each rollout the request was assigned in: of the version that answered
    (the candidate's, for a shadow's copy)."""
    ok = all(r != "abort" for r in record.finish_reasons)
    refused = any(not d.allowed for d in gen.decisions)
    timings = record.timings.ttft_s, record.timings.tpot_s
    for kind, a in gen.uses.assigned.items():
        if a.rollout_id is None:
            continue
        if gen.shadow:  # a copy answered by the shadow's candidates
            if a.shadow is not None and kind is not Kind.POLICY:
                state.adaptation.record(a.rollout_id, Sample(a.shadow, ok, *timings, refused))
            continue
        state.adaptation.record(a.rollout_id, Sample(a.version, ok, *timings, refused))
        if kind is Kind.POLICY and a.shadow is not None:
            state.adaptation.record(a.rollout_id, Sample(a.shadow, ok, *timings,
                                                         gen.uses.shadow_refused))


def record_failure(state: ServerState, uses: Uses, *, shadow: bool = False) -> None:
    """A request that failed before it ran counts against each version it was assigned (a
    shadow's copy, against the candidates it was mirrored to)."""
    for kind, a in uses.assigned.items():
        version = a.version if not shadow else None if kind is Kind.POLICY else a.shadow
        if a.rollout_id is not None and version is not None:
            state.adaptation.record(a.rollout_id, Sample(version, False))


def record_refused(state: ServerState, uses: Uses) -> None:
    """A request the policy in force refused: a refusal by its version (and, beside it, what
    a shadow's candidate decided)."""
    a = uses.assigned.get(Kind.POLICY)
    if a is None or a.rollout_id is None:
        return
    state.adaptation.record(a.rollout_id, Sample(a.version, True, refused=True))
    if a.shadow is not None:
        state.adaptation.record(a.rollout_id, Sample(a.shadow, True,
                                                     refused=uses.shadow_refused))
