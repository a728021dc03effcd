"""OIDC access tokens as credentials (`serve --auth jwt`): a JWT signed by a key of the
issuer's JWKS file, for our audience, in date; `sub` names the principal, a configured claim the
tenant, a `roles` claim (a list of strings) the roles.

Only asymmetric algorithms are accepted, so a token can be neither unsigned (`alg: none`) nor
HMAC-signed with a public key taken for a secret (the classic algorithm confusion).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from aruntime.contracts.base import NAME_RE
from aruntime.policy.identity import Authenticator, AuthError, Principal, bearer_token

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "Ed25519")
LEEWAY_S = 30


class JwtAuth(Authenticator):
    scheme = "jwt"

    def __init__(self, jwks: dict[str, Any], issuer: str, audience: str,
                 tenant_claim: str = "tenant") -> None:
        for key in jwks.get("keys", []):
            if key.get("kty") == "oct" or "d" in key:  # a JWKS is public keys only
                raise ValueError("the JWKS holds a private or symmetric key; give the "
                                 "issuer's public keys only")
        self.keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        self.issuer, self.audience, self.tenant_claim = issuer, audience, tenant_claim

    @classmethod
    def from_file(cls, path: Path, issuer: str, audience: str,
                  tenant_claim: str = "tenant") -> JwtAuth:
        """ValueError naming the file when it is not a JWKS."""
        try:
            return cls(json.loads(Path(path).read_text(encoding="utf-8")), issuer, audience,
                       tenant_claim)
        except (OSError, UnicodeDecodeError, ValueError, JoseError, KeyError) as exc:
            raise ValueError(f"--jwks {path}: not a readable JWKS: {exc}") from None

    def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        try:
            decoded = jwt.decode(token, self.keys, algorithms=list(ALGORITHMS))
        except (JoseError, ValueError) as exc:  # never echo the token
            raise AuthError(f"invalid token: {type(exc).__name__}") from None
        claims = decoded.claims
        self._check_claims(claims)
        tenant, roles = claims.get(self.tenant_claim), claims.get("roles", [])
        if not isinstance(tenant, str) or not NAME_RE.match(tenant):
            raise AuthError(f"the token's {self.tenant_claim!r} claim names no valid tenant")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError("the token's 'roles' claim must be a list of strings")
        return Principal(str(claims["sub"]), tenant, frozenset(roles), "jwt")

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = time.time()
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if claims.get("iss") != self.issuer:
            raise AuthError("the token is from another issuer")
        if self.audience not in audiences:
            raise AuthError("the token is for another audience")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or exp + LEEWAY_S < now:
            raise AuthError("the token has expired (or has no exp)")
        if isinstance(nbf, int | float) and nbf - LEEWAY_S > now:
            raise AuthError("the token is not valid yet")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthError("the token has no subject")
