"""Durable runs over HTTP, on the same server as the OpenAI API: `/v1/runs…`.

The endpoints are plain (synchronous) functions, so the flow a request resumes runs on the
server's thread pool, never on its event loop. Errors have OpenAI's shape: an unknown run is a
404, a refused decision (another digest, a wrong state, an answer off its schema) a 400.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from aruntime.agents.runner import RunError, Runner, RunResult, default_artifacts
from aruntime.serve.errors import InvalidRequestError, NotFoundError
from aruntime.state.journal import open_journal
from aruntime.state.signing import DeploymentKey

router = APIRouter(prefix="/v1/runs")


def open_runner(data_dir: Path, signer: DeploymentKey) -> Runner:
    """The server's runner: the journal named by $ARUNTIME_JOURNAL, else runs.db in the data
    directory (where `aruntime run` puts it too)."""
    from aruntime.agents.cli import JOURNAL_ENV

    journal = open_journal(os.environ.get(JOURNAL_ENV) or data_dir / "runs.db")
    return Runner(journal, signer=signer, artifacts=default_artifacts(journal))


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


def _do(request: Request, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    from aruntime.agents.flow import DeterminismError

    runner = _runner(request)
    if args and isinstance(args[0], str) and name != "start" and \
            runner.journal.get_run(args[0]) is None:
        raise NotFoundError(f"no run {args[0]}", param="run_id")
    try:
        result: RunResult = getattr(runner, name)(*args, **kwargs)
    except (RunError, DeterminismError) as exc:
        raise InvalidRequestError(str(exc)) from None
    return result.to_json()


@router.post("")
def start_run(body: StartRun, request: Request) -> dict[str, Any]:
    return _do(request, "start", body.flow, body.input, run_id=body.run_id, subject=body.subject)


@router.get("")
def list_runs(request: Request, status: str | None = None, limit: int = 100) -> dict[str, Any]:
    runs = _runner(request).journal.list_runs(status, max(1, min(limit, 1000)))
    return {"object": "list", "data": [
        {"run_id": r.run_id, "flow": r.flow, "status": r.status, "created_at": r.created_at,
         "updated_at": r.updated_at} for r in runs]}


@router.get("/{run_id}")
def show_run(run_id: str, request: Request) -> dict[str, Any]:
    journal = _runner(request).journal
    run = journal.get_run(run_id)
    if run is None:
        raise NotFoundError(f"no run {run_id}", param="run_id")
    return {"run_id": run.run_id, "flow": run.flow, "status": run.status, "error": run.error,
            "result": None if run.result is None else json.loads(run.result),
            "created_at": run.created_at, "updated_at": run.updated_at,
            "entries": [{"seq": e.seq, "kind": e.kind, "name": e.name, "state": e.state,
                         "arg_digest": e.arg_digest, "detail": json.loads(e.detail)}
                        for e in journal.entries(run_id)]}


@router.post("/{run_id}/resume")
def resume_run(run_id: str, request: Request) -> dict[str, Any]:
    return _do(request, "resume", run_id)


@router.post("/{run_id}/cancel")
def cancel_run(run_id: str, request: Request) -> dict[str, Any]:
    return _do(request, "cancel", run_id)


@router.get("/{run_id}/verify")
def verify_run(run_id: str, request: Request) -> dict[str, Any]:
    from aruntime.agents.evidence import verify_run as verify

    runner = _runner(request)
    if runner.journal.get_run(run_id) is None:
        raise NotFoundError(f"no run {run_id}", param="run_id")
    key = runner.evidence.signer.public_key if runner.evidence.signer else None
    result = verify(runner.journal, run_id, key)
    return {"run_id": run_id, "records": result.records, "ok": result.ok, "errors": result.errors}


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
