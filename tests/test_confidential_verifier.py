"""The verifier and the relying party on the software attester (this machine has no TEE): a
policy that accepts `software` explicitly affirms it, and every tampering in the matrix —
replayed nonce, stale evidence, wrong measurement, debug on, unknown policy id, swapped
signature, unbound key, revoked verifier key, a truncated sealed message, the software attester
under a hardware-required policy — gives no seal at all, with an error naming what failed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from aruntime.confidential.appraisal import AppraisalPolicy, PolicyFileError
from aruntime.confidential.attester import SoftwareAttester, package_digest
from aruntime.confidential.ear import CONTRAINDICATED, EarError, read_ear
from aruntime.confidential.evidence import Evidence
from aruntime.confidential.relying_party import seal_for_boundary
from aruntime.confidential.sealing import REQUEST_INFO, SealError, SealingKey
from aruntime.confidential.verifier import UnknownPolicyError, Verifier
from aruntime.evidence.signing import DeploymentKey

MODEL = "sha256:" + "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def policy(pid: str = "dev-software", accepted: tuple[str, ...] = ("software",),
           **over: Any) -> AppraisalPolicy:
    return AppraisalPolicy.from_json({
        "policy_id": pid, "accepted_attesters": list(accepted),
        "reference_values": {"aruntime": [package_digest()], "model": [MODEL]},
        "min_versions": {"aruntime": "0.0.1"}, "max_age_s": 300, **over})


class World:
    """A verifier, an attester, a boundary key and a client that counts what it sealed."""

    def __init__(self, **policies: AppraisalPolicy) -> None:
        self.clock = Clock()
        self.verifier_key = DeploymentKey.generate()
        self.verifier = Verifier(self.verifier_key, policies or {"dev-software": policy()},
                                 clock=self.clock)
        self.attester_key = DeploymentKey.generate()
        self.attester = SoftwareAttester(self.attester_key, model_revision=MODEL,
                                         config={"max_model_len": 256}, clock=self.clock)
        self.boundary = SealingKey()
        self.sealed: list[bytes] = []

    def evidence(self, nonce: str | None = None) -> Evidence:
        return self.attester.attest(nonce or self.verifier.challenge(), self.boundary.key_hash)

    def resigned(self, ev: Evidence, **change: Any) -> Evidence:
        """Evidence the attester itself signed, saying what `change` says."""
        body = replace(ev, **change, signature="")
        return replace(body, signature=self.attester_key.sign(body.signed_bytes()))

    def client_seals(self, token: str, nonce: str, *, policy_id: str = "dev-software",
                     boundary: bytes | None = None, revoked: tuple[str, ...] = ()) -> bytes:
        sealed, _ = seal_for_boundary(b"my secret prompt", ear_token=token,
                                      verifier_key=self.verifier_key.public_key, nonce=nonce,
                                      policy_id=policy_id,
                                      boundary_key=boundary or self.boundary.public_bytes,
                                      revoked=revoked)
        self.sealed.append(sealed)
        return sealed


def test_the_software_attester_is_affirmed_only_by_a_policy_that_names_it() -> None:
    w = World()
    ev = w.evidence()
    assert ev.attester == "software" and ev.measurements["model"] == MODEL
    ear, token = w.verifier.appraise(ev, "dev-software")
    assert ear.status == "affirming" and ear.trust_vector["hardware"] == 0, ear.reasons
    sealed = w.client_seals(token, ev.nonce)
    assert w.boundary.open(sealed, REQUEST_INFO) == b"my secret prompt"
    assert read_ear(token, w.verifier_key.public_key).attester == "software"


def _replayed(w: World) -> tuple[str, str]:
    ev = w.evidence()
    w.verifier.appraise(ev, "dev-software")
    return w.verifier.appraise(ev, "dev-software")[1], ev.nonce


def _stale(w: World) -> tuple[str, str]:
    ev = w.evidence()
    w.clock.now += 301
    return w.verifier.appraise(ev, "dev-software")[1], ev.nonce


def _measurement(w: World) -> tuple[str, str]:
    ev = w.resigned(w.evidence(), measurements={**w.evidence().measurements,
                                                "model": "sha256:" + "cd" * 32})
    return w.verifier.appraise(ev, "dev-software")[1], ev.nonce


def _debug(w: World) -> tuple[str, str]:
    ev = w.resigned(w.evidence(), debug=True)
    return w.verifier.appraise(ev, "dev-software")[1], ev.nonce


def _evidence_signature(w: World) -> tuple[str, str]:
    ev, other = w.evidence(), w.evidence()
    return w.verifier.appraise(replace(ev, signature=other.signature), "dev-software")[1], \
        ev.nonce


def _hardware_required(w: World) -> tuple[str, str]:
    ev = w.evidence()
    return w.verifier.appraise(ev, "prod-tdx")[1], ev.nonce


CONTRAINDICATING: dict[str, tuple[Callable[[World], tuple[str, str]], str]] = {
    "replayed nonce": (_replayed, "replay"),
    "stale evidence": (_stale, "301 s old"),
    "wrong measurement": (_measurement, "measurement model"),
    "debug on": (_debug, "debugging on"),
    "swapped evidence signature": (_evidence_signature, "signature does not verify"),
    "software under a hardware-required policy": (_hardware_required,
                                                  "software attester is not accepted"),
}


@pytest.mark.parametrize("case", sorted(CONTRAINDICATING))
def test_tampered_evidence_is_contraindicated_and_nothing_is_sealed(case: str) -> None:
    w = World(**{"dev-software": policy(), "prod-tdx": policy("prod-tdx", ("tdx", "snp"))})
    make, why = CONTRAINDICATING[case]
    token, nonce = make(w)
    ear = read_ear(token, w.verifier_key.public_key)
    assert ear.status == CONTRAINDICATED and any(why in r for r in ear.reasons), ear.reasons
    policy_id = ear.policy_id
    with pytest.raises(EarError, match="contraindicated"):
        w.client_seals(token, nonce, policy_id=policy_id)
    assert w.sealed == []


def test_what_the_client_checks_itself_stops_the_seal() -> None:
    w = World()
    ev = w.evidence()
    _, token = w.verifier.appraise(ev, "dev-software")
    forger = DeploymentKey.generate()
    forged = Verifier(forger, {"dev-software": policy()})
    _, forged_token = forged.appraise(w.attester.attest(forged.challenge(),
                                                        w.boundary.key_hash), "dev-software")
    cases = {
        "another nonce": (lambda: w.client_seals(token, "not-my-nonce"), "another nonce"),
        "unknown policy id": (lambda: w.client_seals(token, ev.nonce, policy_id="prod"),
                              "under policy"),
        "swapped EAR signature": (lambda: w.client_seals(forged_token, ev.nonce),
                                  "not the verifier's"),
        "unbound key": (lambda: w.client_seals(token, ev.nonce,
                                               boundary=SealingKey().public_bytes),
                        "unbound key"),
        "revoked verifier key": (lambda: w.client_seals(
            token, ev.nonce, revoked=(w.verifier_key.key_id,)), "revoked"),
    }
    for name, (attempt, why) in cases.items():
        with pytest.raises(EarError, match=why):
            attempt()
        assert w.sealed == [], name
    with pytest.raises(UnknownPolicyError):
        w.verifier.appraise(w.evidence(), "prod")


def test_a_truncated_or_altered_sealed_message_does_not_open() -> None:
    w = World()
    ev = w.evidence()
    sealed = w.client_seals(w.verifier.appraise(ev, "dev-software")[1], ev.nonce)
    for broken in (sealed[:-1], sealed[:20], sealed[:-1] + bytes([sealed[-1] ^ 1])):
        with pytest.raises(SealError):
            w.boundary.open(broken, REQUEST_INFO)
    with pytest.raises(SealError):  # a request never opens as an answer
        w.boundary.open(sealed, b"aruntime confidential answer v1")
    with pytest.raises(SealError):
        SealingKey().open(sealed, REQUEST_INFO)


def test_an_appraisal_policy_is_checked() -> None:
    with pytest.raises(PolicyFileError, match="accepted_attesters"):
        AppraisalPolicy.from_json({"policy_id": "p", "accepted_attesters": ["sgx"]})
    with pytest.raises(PolicyFileError, match="max_age_s"):
        AppraisalPolicy.from_json({"policy_id": "p", "accepted_attesters": ["tdx"],
                                   "max_age_s": 0})
    assert "PRIVATE" not in repr(SealingKey())
