"""The TEE's side of RCAR: open a session, attest with the broker's nonce and the key that will
receive the resource, fetch it, open the JWE in memory."""

from __future__ import annotations

import httpx

from aruntime.confidential.attester import Attester
from aruntime.confidential.sealing import SealingKey


class RcarError(RuntimeError):
    """The broker refused (status and its reason in the message) or released nothing usable."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def _refused(r: httpx.Response) -> RcarError:
    try:
        message = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = r.text[:200]
    return RcarError(r.status_code, message)


def fetch_resource(url: str, resource: str, attester: Attester, key: SealingKey | None = None,
                   timeout_s: float = 30.0) -> bytes:
    """`resource` ("repo/type/tag") from the broker at `url`, released to `key`."""
    key = key or SealingKey()
    with httpx.Client(base_url=url, timeout=timeout_s) as http:
        r = http.post("/kbs/v0/auth", json={"version": "0.1.0", "tee": attester.type,
                                            "extra-params": ""})
        if r.status_code != 200:
            raise _refused(r)
        evidence = attester.attest(r.json()["nonce"], key.key_hash)
        r = http.post("/kbs/v0/attest", json={"tee-pubkey": key.public_jwk(),
                                              "tee-evidence": evidence.to_json()})
        if r.status_code != 200:
            raise _refused(r)
        r = http.get(f"/kbs/v0/resource/{resource}")
        if r.status_code != 200:
            raise _refused(r)
        return key.open_jwe(r.text)
