"""Attestation evidence: what an attester says about its boundary, bound to the verifier's
nonce and to the hash of the key that will receive secrets (so evidence cannot be replayed for
another session, nor a secret released to a key outside the boundary).

The wire shape is canonical JSON, signed by the attester: for the software attester with the
key it holds (which proves who measured, not that hardware protects it: hence its type,
`software`, which no hardware-requiring policy accepts); for hardware attesters the platform's
own signed report rides in `report` and the signature is the platform's.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from aruntime.contracts.base import canonical_json

SOFTWARE = "software"
HARDWARE_TYPES = frozenset({"tdx", "snp", "nvidia-gpu"})
ATTESTER_TYPES = HARDWARE_TYPES | {SOFTWARE}


class EvidenceError(ValueError):
    """Evidence that is not well formed (before any appraisal)."""


def key_hash(public_key: bytes) -> str:
    """How evidence names the key that will receive secrets: sha256 over its raw bytes."""
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


def report_data(nonce: str, key_hash: str, measurements: Mapping[str, str]) -> bytes:
    """The 64 bytes a hardware report carries for its caller: SHA-512 over the nonce, the bound
    key and the measurements the platform cannot take itself (package, model, config) — so a
    report signed by the platform vouches for all three."""
    return hashlib.sha512(canonical_json({"nonce": nonce, "key_hash": key_hash,
                                          "measurements": dict(measurements)})).digest()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Evidence:
    attester: str  # "software", "tdx", "snp", "nvidia-gpu"
    nonce: str  # base64url, as the verifier issued it
    key_hash: str  # sha256 of the key that will receive secrets
    measurements: Mapping[str, str]  # name -> digest ("aruntime", "model", "config", "mrtd")
    versions: Mapping[str, str] = field(default_factory=dict)
    debug: bool = False
    issued_at: int = 0  # unix seconds, as the attester saw them
    signer: str = ""  # the attester's public key (PEM), for `software`
    report: str = ""  # a hardware report, base64url
    certs: str = ""  # what vouches for the report's key (SNP: the host's cert table), base64url
    signature: str = ""  # over `signed_bytes()`

    def __post_init__(self) -> None:
        if self.attester not in ATTESTER_TYPES:
            raise EvidenceError(f"unknown attester type {self.attester!r}")
        if not self.key_hash.startswith("sha256:"):
            raise EvidenceError("key_hash must be 'sha256:<hex>'")

    def signed_bytes(self) -> bytes:
        body = asdict(self)
        body.pop("signature")
        return canonical_json(body)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Evidence:
        if not isinstance(data, dict):
            raise EvidenceError("evidence must be a JSON object")
        try:
            return cls(**data)
        except TypeError as exc:
            raise EvidenceError(f"evidence does not have the expected fields: {exc}") from None

    @classmethod
    def loads(cls, text: str | bytes) -> Evidence:
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise EvidenceError(f"evidence is not JSON: {exc}") from None
