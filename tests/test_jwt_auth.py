"""OIDC access tokens (`serve --auth jwt`): a token signed by the issuer's key, for our audience,
in date, names its principal, tenant and roles; anything else is an AuthError naming what is
wrong and never the token — an unsigned token and an HMAC one made with the public key
included (the algorithm-confusion attack)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from aruntime.policy.identity import AuthError
from aruntime.policy.jwt_auth import JwtAuth

ISSUER, AUDIENCE = "https://id.example", "aruntime"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k1"})


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> JwtAuth:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [KEY.as_dict(private=False)]}))
    return JwtAuth.from_file(path, ISSUER, AUDIENCE, tenant_claim="org")


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "org": "acme",
            "roles": ["operator"], "iat": now, "exp": now + 300, **over}


def token(payload: dict[str, Any], key: Any = KEY, alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": "k1"}, payload, key)


def test_a_good_token_names_principal_tenant_and_roles(auth: JwtAuth) -> None:
    who = auth.authenticate(f"Bearer {token(claims())}")
    assert (who.id, who.tenant, who.roles, who.via) == ("alice", "acme",
                                                       frozenset({"operator"}), "jwt")


# each made when its test runs: made at collection, a good token's five minutes can pass before
@pytest.mark.parametrize("make, why", [
    (lambda: claims(exp=int(time.time()) - 3600), "expired"),
    (lambda: claims(aud="someone-else"), "audience"),
    (lambda: claims(iss="https://evil.example"), "issuer"),
    (lambda: claims(org=None), "tenant"),
    (lambda: claims(roles="admin"), "roles"),
])
def test_claims_that_do_not_hold_are_refused(auth: JwtAuth,
                                             make: Callable[[], dict[str, Any]],
                                             why: str) -> None:
    bad = make()
    with pytest.raises(AuthError, match=why):
        auth.authenticate(f"Bearer {token({k: v for k, v in bad.items() if v is not None})}")


def test_forged_tokens_are_refused(auth: JwtAuth) -> None:
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none'})}.{b64(claims(sub='mallory'))}."
    public_as_secret = OctKey.import_key(json.dumps(KEY.as_dict(private=False)).encode())
    confused = token(claims(sub="mallory"), public_as_secret, "HS256")
    for forged in (unsigned, confused, token(claims(sub="mallory"), OTHER), "not.a.jwt"):
        with pytest.raises(AuthError) as info:
            auth.authenticate(f"Bearer {forged}")
        assert forged not in str(info.value)


def test_a_missing_or_malformed_header_is_refused(auth: JwtAuth) -> None:
    for header in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(AuthError):
            auth.authenticate(header)


def test_a_bad_jwks_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{nope")
    with pytest.raises(ValueError, match="not a readable JWKS"):
        JwtAuth.from_file(path, ISSUER, AUDIENCE)


def test_a_jwks_with_a_private_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [KEY.as_dict(private=True)]}))
    with pytest.raises(ValueError, match="private or symmetric"):
        JwtAuth.from_file(path, ISSUER, AUDIENCE)
