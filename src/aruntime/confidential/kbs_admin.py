"""The key broker's admin API: `POST /kbs/v0/resource/<repo>/<type>/<tag>` stores a resource
(the request body, as is) and `POST /kbs/v0/resource-policy/<repo>/<type>/<tag>` its release
policy — both only for a bearer token signed by the admin key (admin_token.py). A broker
started without an admin key refuses every admin request: default deny."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from aruntime.confidential import release_policy
from aruntime.confidential.admin_token import AdminTokenError, check_admin_token
from aruntime.confidential.http_errors import error
from aruntime.fsutil import write_atomic

kbs_error = partial(error, service="kbs")
MAX_RESOURCE_BYTES = 1 << 20  # keys and small secrets, not the weights themselves
POLICY_SUFFIX = ".policy.json"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def resource_path(root: Path, repo: str, kind: str, tag: str) -> Path | None:
    """Where a resource lives, or None for a name that is not one (a traversal, a policy)."""
    if not all(_PART.match(p) for p in (repo, kind, tag)) or tag.endswith(POLICY_SUFFIX):
        return None
    return root / repo / kind / tag


def add_admin_routes(app: FastAPI, resources: Path, admin_key: Ed25519PublicKey | None) -> None:
    async def admitted(request: Request, repo: str, kind: str, tag: str) -> Response | Path:
        if admin_key is None:
            return kbs_error(403, "this broker takes no admin requests (start it with "
                             "--admin-key FILE)")
        auth = request.headers.get("authorization", "")
        try:
            check_admin_token(auth.removeprefix("Bearer ").strip(), admin_key)
        except AdminTokenError as exc:
            return kbs_error(401, str(exc))
        path = resource_path(resources, repo, kind, tag)
        if path is None:
            return kbs_error(400, f"{repo}/{kind}/{tag} is not a resource name")
        return path

    @app.post("/kbs/v0/resource/{repo}/{kind}/{tag}")
    async def put_resource(repo: str, kind: str, tag: str, request: Request) -> Response:
        where = await admitted(request, repo, kind, tag)
        if isinstance(where, Response):
            return where
        body = await request.body()
        if not body or len(body) > MAX_RESOURCE_BYTES:
            return kbs_error(400, f"a resource is 1 to {MAX_RESOURCE_BYTES} bytes")
        where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(where, body, 0o600)
        return JSONResponse({"resource": f"{repo}/{kind}/{tag}", "bytes": len(body)})

    @app.post("/kbs/v0/resource-policy/{repo}/{kind}/{tag}")
    async def put_policy(repo: str, kind: str, tag: str, request: Request) -> Response:
        where = await admitted(request, repo, kind, tag)
        if isinstance(where, Response):
            return where
        try:
            rule = json.loads(await request.body())
            release_policy.check(rule)
        except (ValueError, release_policy.ReleasePolicyError) as exc:
            return kbs_error(400, f"not a release policy: {exc}")
        where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(where.with_name(where.name + POLICY_SUFFIX),
                     json.dumps(rule).encode(), 0o600)
        return JSONResponse({"resource": f"{repo}/{kind}/{tag}", "policy": rule})
