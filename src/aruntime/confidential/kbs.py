"""A key broker speaking Trustee's RCAR protocol: `POST /kbs/v0/auth` opens a session and
answers a nonce; `POST /kbs/v0/attest` takes the TEE's public key and its evidence, which must
answer that nonce and bind that key, and appraises it (the verifier's EAR); `GET
/kbs/v0/resource/<repo>/<type>/<tag>` releases a resource as a compact JWE (ECDH-ES, A256GCM)
to the attested key — only when the resource's release policy holds over the EAR's claims.
No session is a 401, a policy that does not hold a 403, an unknown resource a 404.

Resources are files `DIR/<repo>/<type>/<tag>`, each with its release policy beside it in
`<tag>.policy.json` (none: the result must be affirming, and under the broker's policy); the
admin API (kbs_admin.py) puts them there. Every release is appended to the broker's
transparency log — which resource, to which attested key, under which measurements — and the
release names its leaf (`ARuntime-Transparency-Index`), whose inclusion proof
`GET /kbs/v0/transparency/proof/<index>` serves against a signed tree head.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from aruntime.confidential import release_policy
from aruntime.confidential.ear import Ear
from aruntime.confidential.evidence import Evidence, EvidenceError, key_hash, unb64
from aruntime.confidential.kbs_admin import add_admin_routes, kbs_error, resource_path
from aruntime.confidential.transparency import TransparencyLog
from aruntime.confidential.verifier import Verifier

COOKIE = "kbs-session-id"
INDEX_HEADER = "ARuntime-Transparency-Index"
_error = kbs_error


@dataclass
class Session:
    nonce: str
    ear: Ear | None = None
    tee_jwk: dict[str, Any] | None = None
    measurements: dict[str, str] = field(default_factory=dict)


def kbs_app(verifier: Verifier, policy_id: str, resources: Path, *,
            log: TransparencyLog | None = None,
            admin_key: Ed25519PublicKey | None = None) -> FastAPI:
    """`log`: where releases are published (default: one under `resources`, signed by the
    verifier's key); `admin_key`: who may upload resources (None: nobody)."""
    app = FastAPI(title="ARuntime KBS", docs_url=None, redoc_url=None, openapi_url=None)
    broker = Broker(verifier, policy_id, resources,
                    log or TransparencyLog(resources / ".kbs" / "transparency.jsonl",
                                           verifier.key))
    app.add_api_route("/kbs/v0/auth", broker.auth, methods=["POST"])
    app.add_api_route("/kbs/v0/attest", broker.attest, methods=["POST"])
    app.add_api_route("/kbs/v0/resource/{repo}/{kind}/{tag}", broker.resource, methods=["GET"])
    app.add_api_route("/kbs/v0/transparency/proof/{index}", broker.proof, methods=["GET"])
    app.add_api_route("/kbs/v0/transparency/key", broker.log_key, methods=["GET"])
    add_admin_routes(app, resources, admin_key)
    return app


class Broker:
    """The RCAR sessions and what they may be released."""

    def __init__(self, verifier: Verifier, policy_id: str, resources: Path,
                 log: TransparencyLog) -> None:
        self.verifier, self.policy_id, self.resources, self.log = (verifier, policy_id,
                                                                   resources, log)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def _session(self, request: Request) -> Session | None:
        with self._lock:
            return self._sessions.get(request.cookies.get(COOKIE, ""))

    async def auth(self) -> Response:
        sid, nonce = secrets.token_urlsafe(24), self.verifier.challenge()
        with self._lock:
            self._sessions[sid] = Session(nonce)
        response = JSONResponse({"nonce": nonce, "extra-params": ""})
        response.set_cookie(COOKIE, sid, httponly=True, samesite="strict")
        return response

    async def attest(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return _error(401, "no session: POST /kbs/v0/auth first")
        try:
            body = json.loads(await request.body())
            jwk, evidence = body["tee-pubkey"], Evidence.from_json(body["tee-evidence"])
            raw = unb64(jwk["x"]) if jwk.get("kty") == "OKP" and jwk.get("crv") == "X25519" \
                else b""
        except (ValueError, KeyError, TypeError, AttributeError, EvidenceError) as exc:
            return _error(400, f"an attest request is {{tee-pubkey, tee-evidence}}: {exc}")
        if len(raw) != 32:
            return _error(400, "tee-pubkey must be an X25519 OKP JWK")
        if evidence.nonce != session.nonce:
            return _error(401, "the evidence answers another session's nonce")
        ear, token = self.verifier.appraise(evidence, self.policy_id,
                                            expected_key_hash=key_hash(raw))
        session.ear, session.tee_jwk = ear, jwk
        session.measurements = dict(evidence.measurements)
        return JSONResponse({"token": token})

    async def resource(self, repo: str, kind: str, tag: str, request: Request) -> Response:
        session = self._session(request)
        if session is None or session.ear is None or session.tee_jwk is None:
            return _error(401, "no attested session: auth, then attest")
        path = resource_path(self.resources, repo, kind, tag)
        if path is None or not path.is_file():
            return _error(404, "no such resource")
        ear = session.ear
        if not release_policy.allows(_policy_of(path, self.policy_id),
                                     release_policy.claims_of(ear)):
            return _error(403, f"the release policy of {repo}/{kind}/{tag} does not hold for "
                          f"this attestation ({ear.status}, {ear.attester})")
        token = _jwe(path.read_bytes(), session.tee_jwk)
        index = self.log.append({"kind": "key-release", "resource": f"{repo}/{kind}/{tag}",
                                 "attester": ear.attester, "policy_id": ear.policy_id,
                                 "key_hash": ear.key_hash, "measurements": session.measurements,
                                 "at": int(time.time())})
        return Response(token, media_type="application/jose", headers={INDEX_HEADER: str(index)})

    async def proof(self, index: int) -> Response:
        try:
            return JSONResponse(self.log.proof(index))
        except IndexError as exc:
            return _error(404, str(exc))

    async def log_key(self) -> Response:
        return PlainTextResponse(self.log.key.public_pem())


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
