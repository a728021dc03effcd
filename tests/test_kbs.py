"""The key broker over RCAR on a real socket: a resource is released, as a JWE to the attested
key, only to evidence that answers the session's nonce, binds that key and passes the release
policy; everything else is a 401, 403 or 404 and releases nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aruntime.confidential.appraisal import AppraisalPolicy
from aruntime.confidential.attester import SoftwareAttester, package_digest
from aruntime.confidential.kbs import kbs_app
from aruntime.confidential.kbs_client import RcarError, fetch_resource
from aruntime.confidential.sealing import SealError, SealingKey
from aruntime.confidential.verifier import Verifier
from aruntime.evidence.signing import DeploymentKey
from aruntime.serve.launch import BackgroundServer

MODEL = "sha256:" + "ab" * 32
SECRET = b"the model's weight key: 32 bytes"


def policies() -> dict[str, AppraisalPolicy]:
    refs = {"aruntime": [package_digest()], "model": [MODEL]}
    return {"dev": AppraisalPolicy.from_json({"policy_id": "dev", "reference_values": refs,
                                              "accepted_attesters": ["software"]}),
            "prod": AppraisalPolicy.from_json({"policy_id": "prod", "reference_values": refs,
                                               "accepted_attesters": ["tdx", "snp"]})}


def broker(tmp: Path, policy_id: str) -> BackgroundServer:
    res = tmp / "res" / "models" / "key"
    res.mkdir(parents=True, exist_ok=True)
    (res / "m1").write_bytes(SECRET)
    (res / "hw").write_bytes(SECRET)
    (res / "hw.policy.json").write_text(json.dumps(
        {"allOf": [{"claim": "status", "equals": "affirming"},
                   {"claim": "attester", "in": ["tdx", "snp"]}]}))
    verifier = Verifier(DeploymentKey.generate(), policies())
    return BackgroundServer(kbs_app(verifier, policy_id, tmp / "res"))


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    with broker(tmp_path_factory.mktemp("kbs"), "dev") as srv:
        yield srv


@pytest.fixture
def attester() -> SoftwareAttester:
    return SoftwareAttester(DeploymentKey.generate(), model_revision=MODEL)


def test_an_affirmed_boundary_gets_the_resource_sealed_to_its_key(
        dev: BackgroundServer, attester: SoftwareAttester) -> None:
    assert fetch_resource(dev.url, "models/key/m1", attester).data == SECRET


def test_what_the_release_policy_or_the_broker_refuses_releases_nothing(
        dev: BackgroundServer, attester: SoftwareAttester, tmp_path: Path) -> None:
    with pytest.raises(RcarError, match="403: the release policy of models/key/hw"):
        fetch_resource(dev.url, "models/key/hw", attester)  # asks for hardware
    for missing in ("models/key/nope", "models/key/hw.policy.json"):
        with pytest.raises(RcarError, match="404"):
            fetch_resource(dev.url, missing, attester)
    with broker(tmp_path, "prod") as prod, pytest.raises(RcarError, match="403"):
        fetch_resource(prod.url, "models/key/m1", attester)  # the software attester, refused
    with httpx.Client(base_url=dev.url) as http:
        assert http.get("/kbs/v0/resource/models/key/m1").status_code == 401  # no session
        assert http.get("/kbs/v0/resource/models/..%2F..%2Fetc/passwd").status_code in (401, 404)


def test_replayed_and_unbound_evidence_release_nothing(dev: BackgroundServer,
                                                       attester: SoftwareAttester) -> None:
    key, other = SealingKey(), SealingKey()
    with httpx.Client(base_url=dev.url) as first, httpx.Client(base_url=dev.url) as second:
        nonce = first.post("/kbs/v0/auth", json={"tee": "software"}).json()["nonce"]
        evidence = attester.attest(nonce, key.key_hash).to_json()
        second.post("/kbs/v0/auth", json={"tee": "software"})
        replay = second.post("/kbs/v0/attest", json={"tee-pubkey": key.public_jwk(),
                                                     "tee-evidence": evidence})
        assert replay.status_code == 401  # another session's nonce
        unbound = first.post("/kbs/v0/attest", json={"tee-pubkey": other.public_jwk(),
                                                     "tee-evidence": evidence})
        assert unbound.status_code == 200  # appraised: contraindicated, so nothing releases
        assert first.get("/kbs/v0/resource/models/key/m1").status_code == 403


def test_a_truncated_jwe_does_not_open(dev: BackgroundServer,
                                       attester: SoftwareAttester) -> None:
    key = SealingKey()
    with httpx.Client(base_url=dev.url) as http:
        nonce = http.post("/kbs/v0/auth", json={"tee": "software"}).json()["nonce"]
        http.post("/kbs/v0/attest", json={"tee-pubkey": key.public_jwk(),
                                          "tee-evidence": attester.attest(
                                              nonce, key.key_hash).to_json()})
        token = http.get("/kbs/v0/resource/models/key/m1").text
    assert key.open_jwe(token) == SECRET
    for broken in (token[:-4], token.rsplit(".", 1)[0], token.replace(".", "", 1)):
        with pytest.raises(SealError):
            key.open_jwe(broken)
    with pytest.raises(SealError):
        SealingKey().open_jwe(token)  # released to another key
