"""The clients of the key broker. The TEE's side of RCAR: open a session, attest with the
broker's nonce and the key that will receive the resource, fetch it, open the JWE in memory,
and check that the release is in the broker's transparency log. The admin's side: put a
resource and its release policy, with a token signed by the admin key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from aruntime.confidential.admin_token import admin_token
from aruntime.confidential.attester import Attester
from aruntime.confidential.http_errors import message_of
from aruntime.confidential.sealing import SealError, SealingKey
from aruntime.confidential.transparency import check_proof
from aruntime.evidence.signing import DeploymentKey, SigningError, load_public_key


class RcarError(RuntimeError):
    """The broker refused (status and its reason in the message) or released nothing usable."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Release:
    data: bytes = b""
    log_index: int = -1  # the release's leaf in the broker's transparency log
    leaf: dict[str, Any] | None = None  # that leaf, checked against the signed tree head

    def __repr__(self) -> str:  # never the released bytes
        return f"Release({len(self.data)} bytes, log leaf {self.log_index})"


def _refused(r: httpx.Response) -> RcarError:
    return RcarError(r.status_code, message_of(r))


def _ok(r: httpx.Response) -> httpx.Response:
    if r.status_code != 200:
        raise _refused(r)
    return r


def fetch_resource(url: str, resource: str, attester: Attester, key: SealingKey | None = None,
                   timeout_s: float = 30.0) -> Release:
    """`resource` ("repo/type/tag") from the broker at `url`, released to `key`."""
    key = key or SealingKey()
    try:
        with httpx.Client(base_url=url, timeout=timeout_s) as http:
            return _rcar(http, resource, attester, key)
    except httpx.HTTPError as exc:
        raise RcarError(503, f"cannot reach the broker at {url}: {exc}") from None
    except SealError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise RcarError(502, f"the broker at {url} answers outside RCAR: {exc!r}") from None


def _rcar(http: httpx.Client, resource: str, attester: Attester, key: SealingKey) -> Release:
    nonce = _ok(http.post("/kbs/v0/auth", json={"version": "0.1.0", "tee": attester.type,
                                                "extra-params": ""})).json()["nonce"]
    evidence = attester.attest(nonce, key.key_hash)
    _ok(http.post("/kbs/v0/attest", json={"tee-pubkey": key.public_jwk(),
                                          "tee-evidence": evidence.to_json()}))
    r = _ok(http.get(f"/kbs/v0/resource/{resource}"))
    data = key.open_jwe(r.text)
    index = int(r.headers.get("ARuntime-Transparency-Index", "-1"))
    return Release(data, index, _logged(http, index, resource, key.key_hash))


def _logged(http: httpx.Client, index: int, resource: str, key_hash: str) -> dict[str, Any]:
    """The release's leaf, proven included in the log the broker signs; RcarError when the
    broker released without publishing (or published another release)."""
    if index < 0:
        raise RcarError(502, "the broker released without naming its transparency leaf")
    try:
        log_key = load_public_key(_ok(http.get("/kbs/v0/transparency/key")).text)
        leaf = check_proof(_ok(http.get(f"/kbs/v0/transparency/proof/{index}")).json(), log_key)
    except (SigningError, ValueError, KeyError, TypeError) as exc:
        raise RcarError(502, f"the release is not proven in the broker's log: {exc}") from None
    if leaf.get("resource") != resource or leaf.get("key_hash") != key_hash:
        raise RcarError(502, "the broker's log leaf names another release")
    return leaf


def put_resource(url: str, resource: str, data: bytes, admin: DeploymentKey,
                 policy: dict[str, Any] | None = None, timeout_s: float = 30.0) -> None:
    """Store `data` as `resource` at the broker (and its release policy, when given)."""
    headers = {"Authorization": f"Bearer {admin_token(admin)}"}
    try:
        with httpx.Client(base_url=url, timeout=timeout_s, headers=headers) as http:
            if policy is not None:
                _ok(http.post(f"/kbs/v0/resource-policy/{resource}", json=policy))
            _ok(http.post(f"/kbs/v0/resource/{resource}", content=data))
    except httpx.HTTPError as exc:
        raise RcarError(503, f"cannot reach the broker at {url}: {exc}") from None
