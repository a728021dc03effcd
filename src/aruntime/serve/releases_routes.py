"""Releases and rollouts over HTTP: `/v1/releases` (list, add, one name's versions, aliases and
traffic, `served?at=`, verify) and `/v1/rollouts` (start, list, status, approve, abort,
promote). Each is decided by the policy (`read_release`, `manage_release`, and for an approval
`approve_release`), and who made it is the authenticated principal, never the body."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from aruntime.adapt.analysis import Analysis
from aruntime.adapt.artifact import Kind, ReleaseError, UnknownRelease
from aruntime.adapt.controller import RolloutController
from aruntime.policy.decision import Action, Resource
from aruntime.serve.auth import acting, decide, require_principal
from aruntime.serve.errors import InvalidRequestError, NotFoundError
from aruntime.serve.json_body import JsonBodyRoute
from aruntime.serve.state import state_of
from aruntime.timeutil import parse_rfc3339

router = APIRouter(prefix="/v1", dependencies=[Depends(require_principal)],
                   route_class=JsonBodyRoute)
T = TypeVar("T")


class AddRelease(BaseModel):
    kind: Kind
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
    content: str | None = Field(None, description="the artifact itself (prompt, route, "
                                "retrieval: a text or JSON file's content)")
    path: str | None = Field(None, description="or, for a model or a policy bundle, a path on "
                             "the server (never for what a request would read as text)")
    inputs: dict[str, str] = {}


class MoveAlias(BaseModel):
    version: str
    alias: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")


class StartRollout(BaseModel):
    name: str
    to: str
    steps: list[int] = [10, 25, 50, 100]
    pause_s: float = Field(0.0, ge=0)
    analysis: dict[str, Any] | None = None
    shadow: bool = False
    require_approval: bool = False


class Approval(BaseModel):
    approves: str = Field(description="the rollout's digest, exactly")


class Abort(BaseModel):
    reason: str = "aborted by a person"


def _controller(request: Request, action: Action, name: str) -> RolloutController:
    controller: RolloutController = state_of(request).adaptation
    kind = controller.registry.kind_of(name)
    decide(request, action, Resource("Release", name, {"kind": kind.value if kind else ""}),
           log=action is Action.READ_RELEASE)
    return controller


def _who(request: Request) -> str:
    return acting(request).id


def _answer(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except UnknownRelease as exc:
        raise NotFoundError(str(exc)) from None
    except ReleaseError as exc:
        raise InvalidRequestError(str(exc), code="release_error") from None


@router.get("/releases")
def list_releases(request: Request, name: str | None = None) -> dict[str, Any]:
    c = _controller(request, Action.READ_RELEASE, name or "*")
    return {"object": "list", "data": [r.to_json() for r in c.registry.releases(name)]}


@router.post("/releases")
def add_release(body: AddRelease, request: Request) -> dict[str, Any]:
    c = _controller(request, Action.MANAGE_RELEASE, body.name)
    if (body.content is None) == (body.path is None):
        raise InvalidRequestError("give the artifact's content or a path, one of them")
    if body.path is not None and body.kind not in (Kind.MODEL, Kind.POLICY):
        raise InvalidRequestError(f"a {body.kind.value} release is sent as its content: a "
                                  "server path would let a request read any file", param="path")
    if body.path is not None:
        return _answer(lambda: c.registry.add(body.kind, body.name, Path(str(body.path)),
                                              _who(request), body.inputs).to_json())
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / body.name
        file.write_text(body.content or "", encoding="utf-8")
        return _answer(lambda: c.registry.add(body.kind, body.name, file, _who(request),
                                              body.inputs).to_json())


@router.get("/releases/{name}")
def show_release(name: str, request: Request) -> dict[str, Any]:
    c = _controller(request, Action.READ_RELEASE, name)
    versions = [r.to_json() for r in c.registry.releases(name)]
    if not versions:
        raise NotFoundError(f"no release named {name!r}")
    return {"name": name, "versions": versions, "aliases": c.registry.aliases(name),
            "moves": c.registry.moves(name), "traffic": c.registry.traffic_now(name)}


@router.post("/releases/{name}/aliases")
def move_alias(name: str, body: MoveAlias, request: Request) -> dict[str, Any]:
    c = _controller(request, Action.MANAGE_RELEASE, name)
    version = _answer(lambda: c.move_alias(name, body.version, body.alias, _who(request)))
    return {"name": name, "alias": body.alias, "version": version}


@router.get("/releases/{name}/served")
def served(name: str, at: str, request: Request) -> dict[str, Any]:
    c = _controller(request, Action.READ_RELEASE, name)
    try:
        instant: datetime = parse_rfc3339(at)
    except ValueError as exc:
        raise InvalidRequestError(f"at: {exc}", param="at") from None
    got = c.registry.served(name, instant)
    if got is None:
        raise NotFoundError(f"nothing of {name} was served at {at}")
    return got


@router.get("/releases/{name}/versions/{version}/verify")
def verify(name: str, version: str, request: Request) -> dict[str, Any]:
    c = _controller(request, Action.READ_RELEASE, name)
    release = _answer(lambda: c.registry.get(name, version))
    statement = _answer(lambda: c.registry.verify(release))
    return {"name": name, "version": release.version, "verified": True,
            "provenance": statement["predicate"]}


@router.post("/rollouts")
def start_rollout(body: StartRollout, request: Request) -> dict[str, Any]:
    c = _controller(request, Action.MANAGE_RELEASE, body.name)
    analysis = _answer(lambda: Analysis.from_json(body.analysis)) if body.analysis else None
    return _answer(lambda: c.start(body.name, body.to, body.steps, by=_who(request),
                                   pause_s=body.pause_s, analysis=analysis, shadow=body.shadow,
                                   require_approval=body.require_approval).to_json())


@router.get("/rollouts")
def list_rollouts(request: Request) -> dict[str, Any]:
    c = _controller(request, Action.READ_RELEASE, "*")
    return {"object": "list", "data": [r.to_json() for r in c.store.all()]}


def _rollout_name(request: Request, rollout_id: str) -> str:
    rollout = state_of(request).adaptation.store.get(rollout_id)
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id}")
    return rollout.name


@router.get("/rollouts/{rollout_id}")
def rollout_status(rollout_id: str, request: Request) -> dict[str, Any]:
    c = _controller(request, Action.READ_RELEASE, _rollout_name(request, rollout_id))
    return _answer(lambda: c.status(rollout_id))


@router.post("/rollouts/{rollout_id}/approve")
def approve(rollout_id: str, body: Approval, request: Request) -> dict[str, Any]:
    c = _controller(request, Action.APPROVE_RELEASE, _rollout_name(request, rollout_id))
    return _answer(lambda: c.approve(rollout_id, body.approves, _who(request)).to_json())


@router.post("/rollouts/{rollout_id}/abort")
def abort(rollout_id: str, body: Abort, request: Request) -> dict[str, Any]:
    c = _controller(request, Action.MANAGE_RELEASE, _rollout_name(request, rollout_id))
    return _answer(lambda: c.abort(rollout_id, _who(request), body.reason).to_json())


@router.post("/rollouts/{rollout_id}/promote")
def promote(rollout_id: str, request: Request) -> dict[str, Any]:
    c = _controller(request, Action.MANAGE_RELEASE, _rollout_name(request, rollout_id))
    return _answer(lambda: c.promote(rollout_id, _who(request)).to_json())
