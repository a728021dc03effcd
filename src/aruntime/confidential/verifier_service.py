"""The verifier as its own service (`aruntime verifier serve`), for RATS' background-check
model (a relying party sends it the evidence) and the passport model (the attester fetches a
result to show): `POST /v1/challenge` -> a one-time nonce; `POST /v1/appraise` {evidence,
policy_id, key_hash?} -> {ear}; `GET /v1/key` -> the public key its results are signed with.
`RemoteVerifier` is its client, with the in-process `Verifier`'s two calls, so a
`ConfidentialClient` takes either."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
from fastapi import FastAPI, Request

from aruntime.confidential.ear import Ear, read_ear
from aruntime.confidential.evidence import Evidence, EvidenceError
from aruntime.confidential.http_errors import error, message_of
from aruntime.confidential.verifier import UnknownPolicyError, Verifier
from aruntime.evidence.signing import load_public_key

_error = partial(error, service="verifier")

def verifier_app(verifier: Verifier) -> FastAPI:
    app = FastAPI(title="ARuntime verifier", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/challenge")
    async def challenge() -> dict[str, str]:
        return {"nonce": verifier.challenge()}

    @app.get("/v1/key")
    async def key() -> dict[str, str]:
        return {"key_id": verifier.key.key_id, "public_key_pem": verifier.key.public_pem()}

    @app.post("/v1/appraise")
    async def appraise(request: Request) -> Any:
        try:
            body = await request.json()
            evidence = Evidence.from_json(body["evidence"])
            policy_id, expected = str(body["policy_id"]), body.get("key_hash")
        except (ValueError, KeyError, TypeError, EvidenceError) as exc:
            return _error(400, f"an appraisal request is {{evidence, policy_id}}: {exc}")
        try:
            _, token = verifier.appraise(evidence, policy_id, expected)
        except UnknownPolicyError as exc:
            return _error(404, str(exc.args[0]))
        return {"ear": token}

    return app


class RemoteVerifier:
    """A verifier service reached over HTTP; its key is fetched once and pinned."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.http = httpx.Client(base_url=url, timeout=timeout_s)
        self.public_key = load_public_key(self.http.get("/v1/key").json()["public_key_pem"])

    def challenge(self) -> str:
        return str(self.http.post("/v1/challenge").json()["nonce"])

    def appraise(self, evidence: Evidence, policy_id: str,
                 expected_key_hash: str | None = None) -> tuple[Ear, str]:
        r = self.http.post("/v1/appraise", json={"evidence": evidence.to_json(),
                                                 "policy_id": policy_id,
                                                 "key_hash": expected_key_hash})
        if r.status_code != 200:
            raise UnknownPolicyError(message_of(r))
        token = str(r.json()["ear"])
        return read_ear(token, self.public_key), token
