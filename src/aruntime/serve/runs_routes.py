"""Durable runs over HTTP, on the same server as the OpenAI API: `/v1/runs…`.

The endpoints are plain (synchronous) functions, so the flow a request resumes runs on the
server's thread pool, never on its event loop. Errors have OpenAI's shape: an unknown run is a
404, a refused decision (another digest, a wrong state, an answer off its schema) a 400.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
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
from aruntime.serve.errors import InvalidRequestError, NotFoundError

router = APIRouter(prefix="/v1/runs")


def open_runner(data_dir: Path, signer: DeploymentKey, models: Models,
                tracer: Tracer | None = None) -> Runner:
    """The server's runner: the journal named by $ARUNTIME_JOURNAL, else runs.db in the data
    directory (where `aruntime run` puts it too); its flows call models through `models`."""
    from aruntime.agents.cli import JOURNAL_ENV

    journal = open_journal(os.environ.get(JOURNAL_ENV) or data_dir / "runs.db")
    return Runner(journal, signer=signer, models=models, artifacts=default_artifacts(journal),
                  tracer=tracer)


class StartRun(BaseModel):
    flow: str = Field(description="MODULE:FUNCTION of a function marked @flow")
    input: Any = None
    run_id: str | None = None
    subject: str | None = None


class Decision(BaseModel):
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


@router.post("")
def start_run(body: StartRun, request: Request) -> dict[str, Any]:
    return _do(request, "start", body.flow, body.input, run_id=body.run_id, subject=body.subject)


@router.get("")
def list_runs(request: Request, status: str | None = None, limit: int = 100) -> dict[str, Any]:
    runs = _runner(request).journal.list_runs(status, max(1, min(limit, 1000)))
    return {"object": "list", "data": [summary(r) for r in runs]}


@router.get("/{run_id}")
def show_run(run_id: str, request: Request) -> dict[str, Any]:
    result: dict[str, Any] = _call(request, "describe", run_id)
    return result


@router.post("/{run_id}/resume")
def resume_run(run_id: str, request: Request) -> dict[str, Any]:
    return _do(request, "resume", run_id)


@router.post("/{run_id}/cancel")
def cancel_run(run_id: str, request: Request) -> dict[str, Any]:
    return _do(request, "cancel", run_id)


@router.get("/{run_id}/verify")
def verify_run(run_id: str, request: Request) -> dict[str, Any]:
    result: dict[str, Any] = _call(request, "verify", run_id).to_json()
    return result


@router.post("/{run_id}/calls/{seq}/approve")
def approve(run_id: str, seq: int, body: Decision, request: Request) -> dict[str, Any]:
    if body.digest is None:
        raise InvalidRequestError("an approval names the digest it approves", param="digest")
    return _do(request, "approve", run_id, seq, body.digest, body.by)


@router.post("/{run_id}/calls/{seq}/reject")
def reject(run_id: str, seq: int, body: Decision, request: Request) -> dict[str, Any]:
    return _do(request, "reject", run_id, seq, body.by, body.reason)


@router.post("/{run_id}/calls/{seq}/respond")
def respond(run_id: str, seq: int, body: Decision, request: Request) -> dict[str, Any]:
    return _do(request, "respond", run_id, seq, body.answer, body.by, body.digest)


@router.post("/{run_id}/calls/{seq}/resolve")
def resolve(run_id: str, seq: int, body: Decision, request: Request) -> dict[str, Any]:
    if (body.failed is None) == (body.output is None):
        raise InvalidRequestError("give either `output` (it happened) or `failed` (it did not)")
    return _do(request, "resolve", run_id, seq, body.by, output=body.output, failed=body.failed)
