"""`aruntime.confidential`'s client: verify the server's boundary, then send it a chat request
sealed to its attested key; the answer comes back sealed to this client's ephemeral key.

    client = ConfidentialClient(url, verifier, "dev-software", verifier_key=…)
    answer = client.chat({"model": "m", "messages": [...]})

The verifier appraises the server's evidence (the client asked for it with the verifier's own
nonce); nothing is sealed unless the signed result affirms it under the policy asked for and
binds the very key the request is sealed to (`relying_party.seal_for_boundary`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.confidential.ear import Ear, EarError
from aruntime.confidential.evidence import Evidence, EvidenceError, b64, unb64
from aruntime.confidential.relying_party import seal_for_boundary
from aruntime.confidential.sealing import ANSWER_INFO, SealError, SealingKey
from aruntime.confidential.transparency import check_proof
from aruntime.confidential.verifier import Verifier
from aruntime.confidential.verifier_service import RemoteVerifier
from aruntime.evidence.signing import SigningError, load_public_key


class ConfidentialError(RuntimeError):
    """The boundary did not prove itself, or an answer did not open: nothing was sent."""


@dataclass
class Attested:
    ear: Ear
    token: str
    nonce: str
    boundary_key: bytes


def published(proof: Any, evidence: Evidence) -> None:
    """The boundary shows what the transparency log shows everyone: its leaf (attester,
    measurements, key) proves into a head signed by the boundary's key, and matches the
    evidence. ConfidentialError otherwise: a boundary that is not published is not trusted."""
    if not isinstance(proof, dict):
        raise ConfidentialError("the boundary is not in a transparency log")
    try:
        leaf = check_proof(proof, load_public_key(evidence.signer))
    except (ValueError, KeyError, TypeError, SigningError) as exc:
        raise ConfidentialError(f"the transparency proof fails: {exc}") from None
    if (leaf.get("attester"), leaf.get("measurements"), leaf.get("key_hash")) != (
            evidence.attester, dict(evidence.measurements), evidence.key_hash):
        raise ConfidentialError("the boundary's evidence differs from what its transparency "
                                "log published")


class ConfidentialClient:
    def __init__(self, base_url: str, verifier: Verifier | RemoteVerifier, policy_id: str, *,
                 verifier_key: Ed25519PublicKey, headers: dict[str, str] | None = None,
                 timeout_s: float = 120.0) -> None:
        self.http = httpx.Client(base_url=base_url, headers=headers or {}, timeout=timeout_s)
        self.verifier, self.policy_id, self.verifier_key = verifier, policy_id, verifier_key

    def attest(self) -> Attested:
        nonce = self.verifier.challenge()
        r = self.http.get("/v1/attestation", params={"nonce": nonce})
        if r.status_code != 200:
            raise ConfidentialError(f"the server does not attest: {r.status_code} {r.text}")
        body = r.json()
        try:
            evidence = Evidence.from_json(body["evidence"])
            boundary_key = unb64(body["hpke_public_key"])
        except (KeyError, TypeError, ValueError, EvidenceError) as exc:
            raise ConfidentialError(f"the attestation is malformed: {exc}") from None
        published(body.get("transparency"), evidence)
        ear, token = self.verifier.appraise(evidence, self.policy_id)
        return Attested(ear, token, nonce, boundary_key)

    def chat(self, request: dict[str, Any], attested: Attested | None = None) -> dict[str, Any]:
        attested = attested or self.attest()
        reply = SealingKey()
        inner = json.dumps({"request": request, "reply_key": b64(reply.public_bytes)})
        try:
            sealed, _ = seal_for_boundary(inner.encode(), ear_token=attested.token,
                                          verifier_key=self.verifier_key, nonce=attested.nonce,
                                          policy_id=self.policy_id,
                                          boundary_key=attested.boundary_key)
        except EarError as exc:
            raise ConfidentialError(f"nothing sent: {exc}") from None
        r = self.http.post("/v1/confidential/chat/completions", json={"sealed": b64(sealed)})
        if "sealed" not in (body := r.json()):
            raise ConfidentialError(f"the server refused: {r.status_code} {r.text}")
        try:
            answer: dict[str, Any] = json.loads(reply.open(unb64(body["sealed"]), ANSWER_INFO))
        except (SealError, ValueError) as exc:
            raise ConfidentialError(f"the answer does not open: {exc}") from None
        return answer

    def close(self) -> None:
        self.http.close()
