"""Who is asking: the principal a credential names, and the seam that reads credentials.

The tenant comes from the credential, never from a request body: a body may only repeat it.
`NoAuth` (serve `--auth none`, loopback only) is the one exception: there nobody is
authenticated, so a body's `aruntime.tenant` is taken as said, as before identities existed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

DEFAULT_TENANT = "default"


class AuthError(Exception):
    """No credential, or one that does not authenticate (HTTP 401). The message never holds
    the credential."""


class ForbiddenError(Exception):
    """Authenticated, but not allowed to do this (HTTP 403)."""


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    tenant: str
    roles: frozenset[str] = field(default_factory=frozenset)
    via: str = "none"  # "key", "jwt" or "none": how the credential was checked
    key_id: str | None = None  # the API key's public id, when `via` is "key"

    @property
    def authenticated(self) -> bool:
        return self.via != "none"

    def acting_for(self, claimed: str | None) -> str:
        """The tenant a request acts in: the credential's. A body naming another is refused;
        without authentication the body's claim stands (loopback only)."""
        if claimed is None or claimed == self.tenant:
            return self.tenant
        if not self.authenticated:
            return claimed
        raise ForbiddenError(f"this credential is for tenant '{self.tenant}', not '{claimed}'")


ANONYMOUS = Principal("anonymous", DEFAULT_TENANT, frozenset({"admin"}), "none")


class Authenticator(ABC):
    """Turns a request's `Authorization` header into a principal. Called once per request,
    before its body is read; raises AuthError (401) and changes nothing."""

    scheme: str  # "none", "keys" or "jwt": what `serve --auth` names

    @abstractmethod
    def authenticate(self, authorization: str | None) -> Principal: ...


class NoAuth(Authenticator):
    """`--auth none`: everyone is the anonymous principal (serve allows it on loopback only)."""

    scheme = "none"

    def authenticate(self, authorization: str | None) -> Principal:
        return ANONYMOUS


def bearer_token(authorization: str | None) -> str:
    """The token of `Authorization: Bearer TOKEN`; AuthError when there is none."""
    if not authorization:
        raise AuthError("missing credential: send Authorization: Bearer <key>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header must be 'Bearer <key>'")
    return token.strip()
