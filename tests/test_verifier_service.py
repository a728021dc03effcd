"""The verifier as its own service (background-check model): a confidential client takes its
nonce and its signed results over HTTP, and chats sealed with a server it affirmed."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from aruntime.confidential.appraisal import AppraisalPolicy
from aruntime.confidential.attester import package_digest
from aruntime.confidential.client import ConfidentialClient, ConfidentialError
from aruntime.confidential.verifier import UnknownPolicyError, Verifier
from aruntime.confidential.verifier_service import RemoteVerifier, verifier_app
from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model
from aruntime.evidence.signing import DeploymentKey
from aruntime.serve.launch import BackgroundServer, background_server


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackgroundServer,
                                                                     BackgroundServer]]:
    config = EngineConfig(model=str(resolve_model("demo")), max_model_len=128,
                          kv_cache_bytes=4 * 1024 * 1024)
    with background_server(config, tmp_path_factory.mktemp("vs"),
                           served_model_name="tiny") as srv:
        refs = {"aruntime": [package_digest()], "model": [srv.app.state.server.info.revision]}
        policies = {p["policy_id"]: AppraisalPolicy.from_json(p) for p in (
            {"policy_id": "dev", "accepted_attesters": ["software"], "reference_values": refs},
            {"policy_id": "prod", "accepted_attesters": ["tdx"], "reference_values": refs})}
        with BackgroundServer(verifier_app(Verifier(DeploymentKey.generate(),
                                                    policies))) as ver:
            yield srv, ver


def test_a_client_uses_a_remote_verifier(
        both: tuple[BackgroundServer, BackgroundServer]) -> None:
    srv, ver = both
    remote = RemoteVerifier(ver.url)
    client = ConfidentialClient(srv.url, remote, "dev", verifier_key=remote.public_key)
    answer = client.chat({"model": "tiny", "max_tokens": 2,
                          "messages": [{"role": "user", "content": "hello"}]})
    assert answer["object"] == "chat.completion"
    strict = ConfidentialClient(srv.url, remote, "prod", verifier_key=remote.public_key)
    with pytest.raises(ConfidentialError, match="software attester is not accepted"):
        strict.chat({"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
    evidence = srv.app.state.server.boundary.attester.attest(remote.challenge(),
                                                             "sha256:" + "0" * 64)
    with pytest.raises(UnknownPolicyError):
        remote.appraise(evidence, "nope")
    assert httpx.post(f"{ver.url}/v1/appraise", json={"x": 1}).status_code == 400
    client.close()
    strict.close()
