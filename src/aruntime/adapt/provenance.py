"""Signed provenance of a release: an in-toto Statement (v1) in a DSSE envelope, signed with an
Ed25519 key — who made the release, from what, when, with which inputs — over the subject, the
release's content digest. Verified offline against the keys a registry trusts, and the subject
against the content as it is now: a byte changed since is a refusal.

DSSE signs PAE(payloadType, payload) = "DSSEv1 <len> <type> <len> <payload>", so a signature
over one payload type can never be read as one over another.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.adapt.artifact import ReleaseError
from aruntime.confidential.evidence import b64, unb64
from aruntime.contracts.base import canonical_json
from aruntime.evidence.signing import DeploymentKey, key_id, verify_signature

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT = "https://in-toto.io/Statement/v1"
PREDICATE = "https://aruntime.dev/release-provenance/v1"


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def statement(name: str, version: str, predicate: Mapping[str, Any]) -> dict[str, Any]:
    algorithm, _, digest = version.partition(":")
    return {"_type": STATEMENT, "subject": [{"name": name, "digest": {algorithm: digest}}],
            "predicateType": PREDICATE, "predicate": dict(predicate)}


def sign(body: Mapping[str, Any], key: DeploymentKey) -> dict[str, Any]:
    payload = canonical_json(body)
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return {"payloadType": PAYLOAD_TYPE, "payload": b64(payload),
            "signatures": [{"keyid": key.key_id, "sig": sig}]}


def verified(envelope: Mapping[str, Any], trusted: Iterable[Ed25519PublicKey],
             name: str, version: str) -> dict[str, Any]:
    """The statement, if a trusted key signed it and its subject is (name, version)."""
    try:
        payload = unb64(envelope["payload"])
        sigs = list(envelope["signatures"])
        if envelope["payloadType"] != PAYLOAD_TYPE:
            raise ValueError(f"payload type {envelope['payloadType']}")
        body = json.loads(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReleaseError(f"{name}@{version[:19]}: the provenance is not a DSSE envelope "
                           f"({exc})") from None
    keys = {key_id(k): k for k in trusted}
    if not any(s.get("keyid") in keys
               and verify_signature(keys[s["keyid"]], pae(PAYLOAD_TYPE, payload), s.get("sig", ""))
               for s in sigs if isinstance(s, dict)):
        raise ReleaseError(f"{name}@{version[:19]}: the provenance is not signed by a trusted key")
    algorithm, _, digest = version.partition(":")
    if body.get("subject") != [{"name": name, "digest": {algorithm: digest}}]:
        raise ReleaseError(f"{name}@{version[:19]}: the provenance is about another artifact")
    out: dict[str, Any] = body
    return out
