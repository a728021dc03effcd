"""The relying party's one rule: nothing leaves for a boundary until its attestation result
checks out — the verifier's signature, the client's own nonce, the policy asked for, a good
status and the very key the secret will be sealed to. `seal_for_boundary` is that rule as one
call: it checks, then seals; when any check fails it raises and seals nothing."""

from __future__ import annotations

from collections.abc import Collection

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.confidential.ear import AFFIRMING, Ear, check_ear
from aruntime.confidential.evidence import key_hash
from aruntime.confidential.sealing import REQUEST_INFO, seal


def seal_for_boundary(plaintext: bytes, *, ear_token: str, verifier_key: Ed25519PublicKey,
                      nonce: str, policy_id: str, boundary_key: bytes,
                      accept: Collection[str] = (AFFIRMING,),
                      revoked: Collection[str] = (), max_age_s: int = 300,
                      info: bytes = REQUEST_INFO) -> tuple[bytes, Ear]:
    """`plaintext` sealed to `boundary_key` (raw X25519) once its EAR holds; EarError else."""
    ear = check_ear(ear_token, verifier_key, nonce=nonce, policy_id=policy_id,
                    key_hash=key_hash(boundary_key), accept=accept, revoked=revoked,
                    max_age_s=max_age_s)
    return seal(plaintext, boundary_key, info), ear
