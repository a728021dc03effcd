"""The attestation result: an EAR (draft-ietf-rats-ear) as a JWT signed by the verifier's
Ed25519 key — its status (affirming / warning / contraindicated), an AR4SI trustworthiness
vector, the appraisal policy's id, the nonce it answers and the key it binds. A relying party
(`check_ear`) accepts it only if the signature is the verifier's, the nonce its own, the policy
the one it asked for, the status good enough and the key the one it will encrypt to.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from aruntime.evidence.signing import DeploymentKey, key_id

PROFILE = "tag:github.com,2023:veraison/ear"
ALG = "Ed25519"  # RFC 9864's fully specified name (EdDSA is deprecated there)
AFFIRMING, WARNING, CONTRAINDICATED = "affirming", "warning", "contraindicated"
RANK = {AFFIRMING: 0, WARNING: 1, CONTRAINDICATED: 2}


class EarError(ValueError):
    """An attestation result a relying party must not act on; says which claim failed."""


@dataclass(frozen=True)
class Ear:
    status: str
    trust_vector: Mapping[str, int]
    policy_id: str
    nonce: str
    key_hash: str
    attester: str
    reasons: tuple[str, ...] = ()
    issued_at: int = 0


def jose_private(key: DeploymentKey) -> OKPKey:
    pem = key.private_key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    return OKPKey.import_key(pem)


def jose_public(public_key: Ed25519PublicKey) -> OKPKey:
    return OKPKey.import_key(public_key.public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))


def sign_ear(ear: Ear, key: DeploymentKey) -> str:
    claims = {"eat_profile": PROFILE, "iat": ear.issued_at or int(time.time()),
              "eat_nonce": ear.nonce,
              "submods": {"aruntime": {
                  "ear.status": ear.status, "ear.trustworthiness-vector": dict(ear.trust_vector),
                  "ear.appraisal-policy-id": ear.policy_id,
                  "ear.aruntime.attester": ear.attester, "ear.aruntime.key-hash": ear.key_hash,
                  "ear.aruntime.reasons": list(ear.reasons)}}}
    return sign_jwt(claims, key)


def sign_jwt(claims: dict[str, Any], key: DeploymentKey) -> str:
    """A JWT of `claims` signed with the Ed25519 key (RFC 9864's `Ed25519`), `kid` its id."""
    return jwt.encode({"alg": ALG, "kid": key.key_id}, claims, jose_private(key), algorithms=[ALG])


def signed_by(token: str, key: Ed25519PublicKey, error: type[Exception], what: str) -> Any:
    """The decoded JWT if `key` signed it; `error` saying `what` (and why) otherwise."""
    try:
        return jwt.decode(token, jose_public(key), algorithms=[ALG])
    except (JoseError, ValueError) as exc:
        raise error(f"{what} ({type(exc).__name__})") from None


def read_ear(token: str, verifier_key: Ed25519PublicKey) -> Ear:
    """The EAR if `token` is signed by `verifier_key`; EarError otherwise."""
    decoded = signed_by(token, verifier_key, EarError,
                        "the attestation result's signature is not the verifier's")
    if decoded.header.get("kid") != key_id(verifier_key):
        raise EarError("the attestation result names another verifier key")
    claims: dict[str, Any] = decoded.claims
    try:
        sub = claims["submods"]["aruntime"]
        return Ear(sub["ear.status"], sub["ear.trustworthiness-vector"],
                   sub["ear.appraisal-policy-id"], claims["eat_nonce"],
                   sub["ear.aruntime.key-hash"], sub["ear.aruntime.attester"],
                   tuple(sub.get("ear.aruntime.reasons", ())), int(claims["iat"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise EarError(f"the attestation result lacks a claim: {exc}") from None


def check_ear(token: str, verifier_key: Ed25519PublicKey, *, nonce: str, policy_id: str,
              key_hash: str, accept: Collection[str] = (AFFIRMING,),
              max_age_s: int = 300, revoked: Collection[str] = ()) -> Ear:
    """What a relying party checks before it releases anything; EarError naming the claim."""
    if key_id(verifier_key) in revoked:
        raise EarError(f"the verifier key {key_id(verifier_key)} is revoked")
    ear = read_ear(token, verifier_key)
    if ear.nonce != nonce:
        raise EarError("the attestation result answers another nonce (a replay?)")
    if ear.policy_id != policy_id:
        raise EarError(f"the attestation result is under policy {ear.policy_id!r}, "
                       f"not {policy_id!r}")
    if ear.status not in accept:
        raise EarError(f"the attestation result is {ear.status}: {'; '.join(ear.reasons)}")
    if ear.key_hash != key_hash:
        raise EarError("the attested key is not the key offered (unbound key)")
    if time.time() - ear.issued_at > max_age_s:
        raise EarError(f"the attestation result is older than {max_age_s} s")
    return ear
