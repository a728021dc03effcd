"""Durable runs over HTTP, on the same server as the OpenAI API: `/v1/runs…`.

The endpoints are plain (synchronous) functions, so the flow a request resumes runs on the
server's thread pool, never on its event loop. Errors have OpenAI's shape: an unknown run is a
404, a refused decision (another digest, a wrong state, an answer off its schema) a 400.

Each route is a decision point on the run (`ARuntime::Run`, with its tenant): `start_run` to
start or resume one, `cancel_run`, `read_evidence` to see it or its evidence (a listing shows
only the runs the principal may read), `approve` for every answer a person gives. A run started
here belongs to the caller; a person's decision is recorded as the authenticated principal's,
with the decision that let them make it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from opentelemetry import context as otel_context
from opentelemetry.trace import Tracer
from pydantic import BaseModel, Field

from aruntime import telemetry
from aruntime.agents.models import Models
from aruntime.agents.runner import (
    RunError,
    Runner,
    RunResult,
    UnknownRunError,
    default_artifacts,
    summary,
)
from aruntime.durable.journal import open_journal
from aruntime.evidence.signing import DeploymentKey
from aruntime.policy.decision import Action, Authorizer, Decision, Resource
from aruntime.serve.auth import acting, decide, principal, require_principal, tenant_for
from aruntime.serve.errors import InvalidRequestError, NotFoundError
from aruntime.serve.json_body import JsonBodyRoute

# strict JSON bodies (serve/json_body.py)
router = APIRouter(prefix="/v1/runs", dependencies=[Depends(require_principal)],
                   route_class=JsonBodyRoute)
# a call's number in its run, within what the journal (SQLite's INTEGER) can hold
Seq = Annotated[int, PathParam(ge=0, le=2 ** 63 - 1)]


def open_runner(data_dir: Path, signer: DeploymentKey, models: Models,
                tracer: Tracer | None = None, authorizer: Authorizer | None = None) -> Runner:
    """The server's runner: the journal named by $ARUNTIME_JOURNAL, else runs.db in the data
    directory (where `aruntime run` puts it too); its flows call models through `models`, and
    their calls are decided by `authorizer` (the server's)."""
    from aruntime.durable.journal import default_journal

    journal = open_journal(default_journal(data_dir))
    return Runner(journal, signer=signer, models=models, artifacts=default_artifacts(journal),
                  tracer=tracer, authorizer=authorizer)


class StartRun(BaseModel):
    # importable names only: nothing else reaches the import system
    flow: str = Field(description="MODULE:FUNCTION of a function marked @flow",
                      pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
    input: Any = None
    run_id: str | None = None
    subject: str | None = None
    tenant: str | None = Field(None, description="the credential's tenant (another is a 403)")


class Answer(BaseModel):
    """A person's answer to a run's call (the policy's decisions are policy/decision.py's)."""

    by: str = "api"
    digest: str | None = Field(None, description="the digest of exactly what is approved")
    answer: Any = None
    reason: str = "rejected"
    output: Any = None
    failed: str | None = None


def _runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner
    return runner


def _call(request: Request, name: str, *args: Any, **kwargs: Any) -> Any:
    """A runner method; its errors in OpenAI's shape (unknown run 404, refusal 400)."""
    from aruntime.agents.flow import DeterminismError

    # the caller's traceparent is the parent of the run's `invoke_agent` span
    token = otel_context.attach(telemetry.parent_context(request.headers))
    try:
        return getattr(_runner(request), name)(*args, **kwargs)
    except UnknownRunError as exc:
        raise NotFoundError(str(exc), param="run_id") from None
    except (RunError, DeterminismError) as exc:
        raise InvalidRequestError(str(exc)) from None
    finally:
        otel_context.detach(token)


def _do(request: Request, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    result: RunResult = _call(request, name, *args, **kwargs)
    return result.to_json()


def _decide_on(request: Request, run_id: str, action: Action) -> Decision:
    """The decision on an existing run (404 if there is none, 403 if denied)."""
    runner = _runner(request)
    run = runner.journal.get_run(run_id)
    if run is None:
        raise NotFoundError(f"no run {run_id}", param="run_id")
    resource = runner.policy.run_resource(run_id, run.flow)
    if not principal(request).authenticated:  # nobody is: anonymous acts in the run's tenant
        tenant_for(request, resource.attrs["tenant"])
    # the tenant the run belongs to: the built-in policy lets only that tenant's principals in
    return decide(request, action, resource, {"tenant": resource.attrs["tenant"]},
                  log=action is Action.READ_EVIDENCE)


def _decider(request: Request, body: Answer, run_id: str) -> tuple[str, dict[str, Any]]:
    """Who decides (the authenticated principal, whatever the body says) and the decision
    that lets them."""
    decision = _decide_on(request, run_id, Action.APPROVE)
    who = acting(request)
    return (who.id if who.authenticated else body.by), decision.evidence()


@router.post("")
def start_run(body: StartRun, request: Request) -> dict[str, Any]:
    runner = _runner(request)
    if body.run_id is not None and runner.journal.get_run(body.run_id) is not None:
        _decide_on(request, body.run_id, Action.START_RUN)  # starting again returns it
    else:
        tenant = tenant_for(request, body.tenant)
        decide(request, Action.START_RUN,
               Resource("Run", body.run_id or "new", {"tenant": tenant, "flow": body.flow}))
    return _do(request, "start", body.flow, body.input, run_id=body.run_id, subject=body.subject,
               principal=acting(request))


@router.get("")
def list_runs(request: Request, status: str | None = None, limit: int = 100,
              tenant: str | None = None) -> dict[str, Any]:
    runner = _runner(request)
    in_tenant = tenant_for(request, tenant)
    runs = runner.journal.list_runs(status, max(1, min(limit, 1000)), tenant=in_tenant)
    readable = []
    for r in runs:
        resource = runner.policy.run_resource(r.run_id, r.flow)
        if not decide(request, Action.READ_EVIDENCE, resource,
                      {"tenant": resource.attrs["tenant"]}, enforce=False, log=True).enforced:
            readable.append(r)
    return {"object": "list", "data": [summary(r) for r in readable]}


@router.get("/{run_id}")
def show_run(run_id: str, request: Request) -> dict[str, Any]:
    _decide_on(request, run_id, Action.READ_EVIDENCE)
    result: dict[str, Any] = _call(request, "describe", run_id)
    return result


@router.post("/{run_id}/resume")
def resume_run(run_id: str, request: Request) -> dict[str, Any]:
    _decide_on(request, run_id, Action.START_RUN)
    return _do(request, "resume", run_id)


@router.post("/{run_id}/cancel")
def cancel_run(run_id: str, request: Request) -> dict[str, Any]:
    _decide_on(request, run_id, Action.CANCEL_RUN)
    return _do(request, "cancel", run_id)


@router.get("/{run_id}/verify")
def verify_run(run_id: str, request: Request) -> dict[str, Any]:
    _decide_on(request, run_id, Action.READ_EVIDENCE)
    result: dict[str, Any] = _call(request, "verify", run_id).to_json()
    return result


@router.post("/{run_id}/calls/{seq}/approve")
def approve(run_id: str, seq: Seq, body: Answer, request: Request) -> dict[str, Any]:
    if body.digest is None:
        raise InvalidRequestError("an approval names the digest it approves", param="digest")
    by, policy = _decider(request, body, run_id)
    return _do(request, "approve", run_id, seq, body.digest, by, policy)


@router.post("/{run_id}/calls/{seq}/reject")
def reject(run_id: str, seq: Seq, body: Answer, request: Request) -> dict[str, Any]:
    by, policy = _decider(request, body, run_id)
    return _do(request, "reject", run_id, seq, by, body.reason, policy)


@router.post("/{run_id}/calls/{seq}/respond")
def respond(run_id: str, seq: Seq, body: Answer, request: Request) -> dict[str, Any]:
    by, policy = _decider(request, body, run_id)
    return _do(request, "respond", run_id, seq, body.answer, by, body.digest, policy)


@router.post("/{run_id}/calls/{seq}/resolve")
def resolve(run_id: str, seq: Seq, body: Answer, request: Request) -> dict[str, Any]:
    if (body.failed is None) == (body.output is None):
        raise InvalidRequestError("give either `output` (it happened) or `failed` (it did not)")
    by, policy = _decider(request, body, run_id)
    return _do(request, "resolve", run_id, seq, by, output=body.output, failed=body.failed,
               policy=policy)
