"""A confidential chat end to end on the software attester, under a policy that accepts it
explicitly: client -> attestation (the verifier's nonce, the server's HPKE key bound inside) ->
sealed prompt -> sealed answer. The server's logs, evidence and journal hold neither the prompt
nor the answer in clear; a request that asks for confidentiality in clear, or for hardware from
a software boundary, is a 403; a policy that requires hardware sends nothing at all."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aruntime.confidential.appraisal import AppraisalPolicy
from aruntime.confidential.attester import package_digest
from aruntime.confidential.client import ConfidentialClient, ConfidentialError
from aruntime.confidential.verifier import Verifier
from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model
from aruntime.evidence.signing import DeploymentKey
from aruntime.serve.launch import BackgroundServer, background_server

SECRET = "my account number is 5517-ZEBRA-9931 and my cat is called Quaternion"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    config = EngineConfig(model=str(resolve_model("demo")), max_model_len=256,
                          kv_cache_bytes=8 * 1024 * 1024)
    with background_server(config, tmp_path_factory.mktemp("conf"),
                           served_model_name="tiny") as srv:
        yield srv


def client_for(server: BackgroundServer, accepted: list[str]) -> ConfidentialClient:
    revision = server.app.state.server.info.revision
    policy = AppraisalPolicy.from_json({
        "policy_id": "p", "accepted_attesters": accepted,
        "reference_values": {"aruntime": [package_digest()], "model": [revision]}})
    key = DeploymentKey.generate()
    return ConfidentialClient(server.url, Verifier(key, {"p": policy}), "p",
                              verifier_key=key.public_key)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": SECRET}],
            "max_tokens": 12, "temperature": 0, **extra}


def files_of(server: BackgroundServer) -> bytes:
    data: Path = server.app.state.server.data_dir
    return b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())


def test_a_sealed_chat_round_trip_leaves_nothing_in_clear(
        server: BackgroundServer, caplog: pytest.LogCaptureFixture) -> None:
    client = client_for(server, ["software"])
    with caplog.at_level(logging.DEBUG):
        attested = client.attest()
        assert attested.ear.status == "affirming" and attested.ear.attester == "software"
        answer = client.chat(chat(), attested)
    text = answer["choices"][0]["message"]["content"]
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] > 0
    stored = files_of(server)
    assert SECRET.encode() not in stored and b"Quaternion" not in stored
    assert SECRET not in caplog.text
    if len(text.strip()) >= 8:  # the demo model's answer, whatever it is
        assert text.encode() not in stored and text not in caplog.text
    data: Path = server.app.state.server.data_dir
    record = json.loads((data / "evidence.jsonl").read_text().splitlines()[-1])
    assert record["attestation_ref"] == f"hpke:{server.app.state.server.boundary.key.key_hash}"
    client.close()


def test_a_policy_that_requires_hardware_sends_nothing(server: BackgroundServer) -> None:
    data: Path = server.app.state.server.data_dir
    before = (data / "evidence.jsonl").read_text() if (data / "evidence.jsonl").exists() else ""
    client = client_for(server, ["tdx", "snp"])
    with pytest.raises(ConfidentialError, match="software attester is not accepted"):
        client.chat(chat())
    after = (data / "evidence.jsonl").read_text() if (data / "evidence.jsonl").exists() else ""
    assert after == before  # no request reached the model
    client.close()


def test_confidentiality_asked_in_clear_or_beyond_the_boundary_is_a_403(
        server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for level in ("attested", "required"):
            r = http.post("/v1/chat/completions",
                          json=chat(aruntime={"confidentiality": level}))
            assert r.status_code == 403 and r.json()["error"]["code"] == "confidentiality_unmet"
        assert http.get("/v1/attestation", params={"nonce": ""}).status_code == 400
        bad = http.post("/v1/confidential/chat/completions", json={"sealed": "AAAA"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "sealed"
    client = client_for(server, ["software"])
    with pytest.raises(ConfidentialError, match="hardware-attested"):
        client.chat(chat(aruntime={"confidentiality": "required"}))
    client.close()


def test_a_confidential_requests_blocks_never_leave_the_device(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from aruntime.kv.config import KVConfig

    def tier_bytes(http: httpx.Client) -> float:
        families = text_string_to_metric_families(http.get("/metrics").text)
        return sum(s.value for f in families if f.name == "aruntime:kv_tier_bytes"
                   for s in f.samples)

    config = EngineConfig(model=str(resolve_model("demo")), max_model_len=256,
                          kv_cache_bytes=8 * 1024 * 1024,
                          kv=KVConfig(host_bytes=1 << 22, disk_dir=str(tmp_path / "kv"),
                                      disk_bytes=1 << 22))
    long = chat(max_tokens=2)
    long["messages"][0]["content"] = SECRET * 4  # several full KV blocks
    with background_server(config, tmp_path / "data", served_model_name="tiny") as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as http:
        client = client_for(srv, ["software"])
        client.chat(long)
        client.chat(long)  # the device's own prefix cache may serve it; no tier may
        assert tier_bytes(http) == 0
        assert not any((tmp_path / "kv").rglob("*.kv"))
        clear = chat(max_tokens=2)
        clear["messages"][0]["content"] = "nothing secret here, " * 12
        assert http.post("/v1/chat/completions", json=clear).status_code == 200
        assert tier_bytes(http) > 0, "a prompt in clear is written through"
        client.close()


def test_the_client_checks_the_boundary_is_published(server: BackgroundServer) -> None:
    from aruntime.confidential.client import published
    from aruntime.confidential.evidence import Evidence

    with httpx.Client(base_url=server.url, timeout=60) as http:
        body = http.get("/v1/attestation", params={"nonce": "n1"}).json()
    evidence, proof = Evidence.from_json(body["evidence"]), body["transparency"]
    published(proof, evidence)  # as served: holds
    other = {**evidence.to_json(), "measurements": {**evidence.measurements,
                                                    "model": "sha256:" + "0" * 64}}
    with pytest.raises(ConfidentialError, match="differs"):
        published(proof, Evidence.from_json(other))
    with pytest.raises(ConfidentialError, match="proof fails"):
        published({**proof, "root": "00" * 32}, evidence)
    with pytest.raises(ConfidentialError, match="not in a transparency log"):
        published(None, evidence)
