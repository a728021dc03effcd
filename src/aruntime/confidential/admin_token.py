"""Who may put resources into the key broker: the holder of the admin key, whose public half
the broker is started with (Trustee's `auth-public-key`). A request carries a short-lived JWT
signed by that key; the broker keeps no admin secret, and without a key configured it takes
no admin request at all."""

from __future__ import annotations

import secrets
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.confidential.ear import sign_jwt, signed_by
from aruntime.evidence.signing import DeploymentKey, key_id

SCOPE = "aruntime.kbs.admin"
TTL_S = 300


class AdminTokenError(ValueError):
    """A token that does not grant the admin API; says why."""


def admin_token(key: DeploymentKey, ttl_s: int = TTL_S) -> str:
    now = int(time.time())
    claims = {"scope": SCOPE, "iat": now, "exp": now + ttl_s, "jti": secrets.token_urlsafe(12)}
    return sign_jwt(claims, key)


def check_admin_token(token: str, admin_key: Ed25519PublicKey) -> None:
    decoded = signed_by(token, admin_key, AdminTokenError, "the admin token is not signed by "
                        f"the broker's admin key {key_id(admin_key)}")
    claims = decoded.claims
    now = time.time()
    if claims.get("scope") != SCOPE:
        raise AdminTokenError(f"the token's scope is not {SCOPE}")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int) or exp <= now or \
            exp - iat > TTL_S or iat > now + 60:
        raise AdminTokenError(f"the admin token has expired or lives longer than {TTL_S} s")
