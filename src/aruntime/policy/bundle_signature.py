"""A policy bundle's detached Ed25519 signature: `bundle.sig` in a bundle directory, or
`FILE.cedar.sig` beside a one-file bundle.

The file is JSON: `key_id`, `digest` (the bundle's version, bundle.py), `signed_at` (UTC, `Z`)
and `signature`, base64url over the canonical JSON of the other three and this format's name.
The keys are the deployment's (evidence/signing.py): `aruntime policy sign` takes a private key
file, `serve --policy-key` and `policy check --policy-key` the public key that must have signed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.contracts.base import canonical_json
from aruntime.evidence.signing import DeploymentKey, key_id, verify_signature
from aruntime.fsutil import write_atomic
from aruntime.policy.cedar_authorizer import PolicyError
from aruntime.timeutil import rfc3339, utc_now

FORMAT = "aruntime.policy-signature/v1"
UNSIGNED = "unsigned"


class SignatureError(PolicyError):
    """A bundle whose signature is missing where a key is trusted, malformed, by another key,
    wrong, or over other bytes than the bundle's (changed after signing)."""


@dataclass(frozen=True, slots=True)
class BundleSignature:
    key_id: str
    digest: str
    signed_at: str
    signature: str

    def payload(self) -> bytes:
        return signed_bytes(self.key_id, self.digest, self.signed_at)

    @classmethod
    def read(cls, path: Path) -> BundleSignature:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SignatureError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except ValueError:
            raise SignatureError(f"{path}: not a JSON signature file") from None
        fields = ("key_id", "digest", "signed_at", "signature")
        if not isinstance(raw, dict) or not all(isinstance(raw.get(f), str) for f in fields):
            raise SignatureError(f"{path}: a signature file holds {', '.join(fields)} (strings)")
        return cls(*(raw[f] for f in fields))


def signed_bytes(signer: str, digest: str, signed_at: str) -> bytes:
    return canonical_json({"format": FORMAT, "key_id": signer, "digest": digest,
                           "signed_at": signed_at})


def write_signature(path: Path, digest: str, key: DeploymentKey) -> BundleSignature:
    """Sign `digest` with `key` and write the signature file at `path`."""
    signed_at = rfc3339(utc_now())
    sig = BundleSignature(key.key_id, digest, signed_at,
                          key.sign(signed_bytes(key.key_id, digest, signed_at)))
    write_atomic(path, (json.dumps(asdict(sig), indent=2) + "\n").encode("utf-8"), 0o644)
    return sig


def check_signature(path: Path, digest: str, trusted: Ed25519PublicKey | None) -> str:
    """What the bundle's signature file at `path` says of the bundle whose digest is `digest`:
    "unsigned", or who signed it and whether that was verified. Raises SignatureError for a
    bundle to refuse: changed after signing (with or without a trusted key), or, with one,
    unsigned, by another key, or a signature that does not verify."""
    if not path.exists():
        if trusted is not None:
            raise SignatureError(f"unsigned: a trusted key is given, so {path} must sign "
                                 "the bundle (aruntime policy sign)")
        return UNSIGNED
    sig = BundleSignature.read(path)
    if sig.digest != digest:
        raise SignatureError(f"{path}: the bundle changed after it was signed (it is "
                             f"{digest[:19]}..., the signature is over {sig.digest[:19]}...)")
    if trusted is None:
        return f"signed by {sig.key_id}, not verified (no trusted key given)"
    if sig.key_id != key_id(trusted):
        raise SignatureError(f"{path}: signed by {sig.key_id}, not by the trusted key "
                             f"{key_id(trusted)}")
    if not verify_signature(trusted, sig.payload(), sig.signature):
        raise SignatureError(f"{path}: the signature does not verify with "
                             f"{key_id(trusted)}")
    return f"signed by {sig.key_id}, verified"
