"""The console over HTTP. `/console` is the page and `/console/assets/NAME` its script and
style, from the package (nothing fetched at run time); they hold no data, so they load without
a credential — the page asks for the operator's key and sends it with every call. Every
`/v1/console/…` call is decided by the policy: `admin` on `ARuntime::Console::"console"`
(the built-in policy grants it within the principal's own tenant; a bundle can keep it to an
`operator` role). What an operator does from the page — approve a run's call, abort or promote
a rollout — goes through that thing's own API, decided by its own permission, recorded as
that operator's."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel

from aruntime.policy.decision import Action, Resource
from aruntime.serve.auth import acting, decide, require_principal
from aruntime.serve.console import views
from aruntime.serve.errors import NotFoundError
from aruntime.serve.json_body import JsonBodyRoute
from aruntime.serve.state import state_of
from aruntime.timeutil import utc_now

ASSETS = {"console.js": "text/javascript", "ui.js": "text/javascript",
          "actions.js": "text/javascript", "console.css": "text/css"}
# the page runs only its own script and style, and talks only to this server
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CONSOLE = Resource("Console", "console")

page_router = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/v1/console", dependencies=[Depends(require_principal)],
                   route_class=JsonBodyRoute)


def _asset(name: str) -> bytes:
    return resources.files("aruntime.serve.console").joinpath("static", name).read_bytes()


def _static(body: bytes, media_type: str) -> Response:
    return Response(body, media_type=media_type,
                    headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                             "X-Content-Type-Options": "nosniff"})


@page_router.get("/console")
def console_page() -> Response:
    return _static(_asset("index.html"), "text/html; charset=utf-8")


@page_router.get("/console/assets/{name}")
def console_asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFoundError(f"no console asset {name!r}")
    return _static(_asset(name), ASSETS[name])


def _operator(request: Request) -> None:
    decide(request, Action.ADMIN, CONSOLE, via="console")


@router.get("/me")
def me(request: Request) -> dict[str, Any]:
    _operator(request)
    who = acting(request)
    return {"principal": who.id, "tenant": who.tenant, "roles": sorted(who.roles),
            "authenticated": who.authenticated}


@router.get("/cluster")
async def cluster(request: Request) -> dict[str, Any]:
    _operator(request)
    return await views.cluster(state_of(request))


@router.get("/traffic")
def traffic(request: Request, since: float = 0.0) -> dict[str, Any]:
    _operator(request)
    return state_of(request).traffic.view(since)


@router.get("/policy")
def policy(request: Request) -> dict[str, Any]:
    _operator(request)
    return views.policy(state_of(request))


@router.get("/claims")
def claims(request: Request) -> dict[str, Any]:
    _operator(request)
    return views.claims(state_of(request).claims_root, utc_now())


class Verify(BaseModel):
    log: Literal["requests", "decisions"]


@router.post("/verify")
async def verify(body: Verify, request: Request) -> dict[str, Any]:
    _operator(request)
    return await asyncio.to_thread(views.verify_log, state_of(request), body.log)
