"""A key broker speaking Trustee's RCAR protocol: `POST /kbs/v0/auth` opens a session and
answers a nonce; `POST /kbs/v0/attest` takes the TEE's public key and its evidence, which must
answer that nonce and bind that key, and appraises it (the verifier's EAR); `GET
/kbs/v0/resource/<repo>/<type>/<tag>` releases a resource as a compact JWE (ECDH-ES, A256GCM)
to the attested key — only when the resource's release policy holds over the EAR's claims.
No session is a 401, a policy that does not hold a 403, an unknown resource a 404.

Resources are files `DIR/<repo>/<type>/<tag>`, each with its release policy beside it in
`<tag>.policy.json` (none: the result must be affirming, and under the broker's policy).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from aruntime.confidential import release_policy
from aruntime.confidential.ear import Ear
from aruntime.confidential.evidence import Evidence, EvidenceError, key_hash, unb64
from aruntime.confidential.http_errors import error
from aruntime.confidential.verifier import Verifier

COOKIE = "kbs-session-id"
_error = partial(error, service="kbs")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@dataclass
class Session:
    nonce: str
    ear: Ear | None = None
    tee_jwk: dict[str, Any] | None = None


def kbs_app(verifier: Verifier, policy_id: str, resources: Path) -> FastAPI:
    app = FastAPI(title="ARuntime KBS", docs_url=None, redoc_url=None, openapi_url=None)
    sessions: dict[str, Session] = {}
    lock = threading.Lock()

    def session_of(request: Request) -> Session | None:
        with lock:
            return sessions.get(request.cookies.get(COOKIE, ""))

    @app.post("/kbs/v0/auth")
    async def auth() -> Response:
        sid, nonce = secrets.token_urlsafe(24), verifier.challenge()
        with lock:
            sessions[sid] = Session(nonce)
        response = JSONResponse({"nonce": nonce, "extra-params": ""})
        response.set_cookie(COOKIE, sid, httponly=True, samesite="strict")
        return response

    @app.post("/kbs/v0/attest")
    async def attest(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return _error(401, "no session: POST /kbs/v0/auth first")
        try:
            body = json.loads(await request.body())
            jwk, evidence = body["tee-pubkey"], Evidence.from_json(body["tee-evidence"])
            raw = unb64(jwk["x"]) if jwk.get("kty") == "OKP" and jwk.get("crv") == "X25519" \
                else b""
        except (ValueError, KeyError, TypeError, EvidenceError) as exc:
            return _error(400, f"an attest request is {{tee-pubkey, tee-evidence}}: {exc}")
        if len(raw) != 32:
            return _error(400, "tee-pubkey must be an X25519 OKP JWK")
        if evidence.nonce != session.nonce:
            return _error(401, "the evidence answers another session's nonce")
        ear, token = verifier.appraise(evidence, policy_id, expected_key_hash=key_hash(raw))
        session.ear, session.tee_jwk = ear, jwk
        return JSONResponse({"token": token})

    @app.get("/kbs/v0/resource/{repo}/{kind}/{tag}")
    async def resource(repo: str, kind: str, tag: str, request: Request) -> Response:
        session = session_of(request)
        if session is None or session.ear is None or session.tee_jwk is None:
            return _error(401, "no attested session: auth, then attest")
        if not all(_PART.match(p) for p in (repo, kind, tag)) or tag.endswith(".policy.json"):
            return _error(404, "no such resource")
        path = resources / repo / kind / tag
        if not path.is_file():
            return _error(404, "no such resource")
        rule = _policy_of(path, policy_id)
        if not release_policy.allows(rule, release_policy.claims_of(session.ear)):
            return _error(403, f"the release policy of {repo}/{kind}/{tag} does not hold for "
                          f"this attestation ({session.ear.status}, {session.ear.attester})")
        return Response(_jwe(path.read_bytes(), session.tee_jwk), media_type="application/jose")

    return app


def _policy_of(path: Path, policy_id: str) -> dict[str, Any]:
    beside = path.with_name(path.name + ".policy.json")
    if beside.is_file():
        rule: dict[str, Any] = json.loads(beside.read_text(encoding="utf-8"))
        release_policy.check(rule)
        return rule
    return {"allOf": [{"claim": "status", "equals": "affirming"},
                      {"claim": "policy_id", "equals": policy_id}]}


def _jwe(plaintext: bytes, jwk: dict[str, Any]) -> str:
    from joserfc import jwe
    from joserfc.jwk import OKPKey

    key = OKPKey.import_key({"kty": "OKP", "crv": "X25519", "x": jwk["x"]})
    return jwe.encrypt_compact({"alg": "ECDH-ES", "enc": "A256GCM"}, plaintext, key)
