"""Weights sealed at rest: `aruntime seal-model` gives the data key to a real key broker only;
`aruntime serve --model DIR --kbs URL` attests, gets the key over RCAR and opens the weights in
memory — serving the very model it sealed — or exits 2 with one line when the release policy
does not hold. The plaintext weights are never written under any directory the server uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_process import free_port, spawn, wait_healthy

from aruntime.cli import main
from aruntime.confidential.admin_token import admin_token
from aruntime.confidential.appraisal import AppraisalPolicy
from aruntime.confidential.attester import package_digest
from aruntime.confidential.kbs import kbs_app
from aruntime.confidential.sealed_weights import (
    SealedFile,
    SealedModelError,
    open_file,
    seal_file,
)
from aruntime.confidential.verifier import Verifier
from aruntime.engine.config import EngineConfig
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.loader import load_checkpoint
from aruntime.engine.sampling import SamplingParams
from aruntime.evidence.signing import DeploymentKey
from aruntime.serve.launch import BackgroundServer

HW_ONLY = {"allOf": [{"claim": "status", "equals": "affirming"},
                     {"claim": "attester", "in": ["tdx", "snp"]}]}
KV_BYTES = 2 * 1024 * 1024


class Broker:
    def __init__(self, root: Path) -> None:
        self.root, self.resources = root, root / "res"
        self.resources.mkdir()
        self.admin = DeploymentKey.load_or_create(root / "admin.pem")
        policy = AppraisalPolicy.from_json({"policy_id": "dev",
                                            "accepted_attesters": ["software"],
                                            "reference_values": {"aruntime": [package_digest()]}})
        self.server = BackgroundServer(kbs_app(
            Verifier(DeploymentKey.generate(), {"dev": policy}), "dev", self.resources,
            admin_key=self.admin.public_key))

    def seal(self, plain: Path, out: Path, resource: str, *extra: str) -> None:
        assert main(["seal-model", str(plain), "--kbs", self.server.url, "--resource", resource,
                     "--out", str(out), "--admin-key", str(self.root / "admin.pem"),
                     *extra]) == 0

    def releases(self) -> list[dict[str, object]]:
        log = self.resources / ".kbs" / "transparency.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("kbs"))
    with b.server:
        yield b


@pytest.fixture(scope="module")
def sealed(broker: Broker, tiny_model_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sealed") / "tiny-sealed"
    broker.seal(tiny_model_dir, out, "models/key/tiny")
    return out


def plaintext_probes(model: Path) -> list[bytes]:
    """Slices of the plaintext weight file that no honest other file would hold."""
    data = (model / "model.safetensors").read_bytes()
    return [data[i:i + 64] for i in range(len(data) // 4, len(data), len(data) // 4)][:3]


def holding(root: Path, probes: list[bytes]) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()
            and any(probe in p.read_bytes() for probe in probes)]


def test_a_chunk_moved_cut_or_altered_does_not_open(tmp_path: Path) -> None:
    plain = tmp_path / "w.safetensors"
    plain.write_bytes(os.urandom(10_000))
    key = os.urandom(32)
    entry = seal_file(plain, tmp_path / "w.sealed", key, 0, chunk_bytes=4096)
    sealed = (tmp_path / "w.sealed").read_bytes()
    assert open_file(sealed, entry, key, 0, 4096) == plain.read_bytes()
    size = 4096 + 16
    flipped = bytearray(sealed)
    flipped[5000] ^= 1
    broken = {"flipped": bytes(flipped), "cut": sealed[:2 * size],
              "swapped": sealed[size:2 * size] + sealed[:size] + sealed[2 * size:]}
    for data in broken.values():
        with pytest.raises(SealedModelError, match="does not open"):
            open_file(data, entry, key, 0, 4096)
    with pytest.raises(SealedModelError):
        open_file(sealed, entry, os.urandom(32), 0, 4096)  # another key
    with pytest.raises(SealedModelError):
        open_file(sealed, entry, key, 1, 4096)  # another file's place
    with pytest.raises(SealedModelError, match="other bytes"):
        open_file(sealed, SealedFile(entry.name, "sha256:" + "0" * 64, entry.size), key, 0,
                  4096)


def test_the_sealed_directory_holds_neither_the_key_nor_the_weights(
        sealed: Path, broker: Broker, tiny_model_dir: Path) -> None:
    assert not list(sealed.glob("*.safetensors"))
    assert (sealed / "model.safetensors.sealed").is_file()
    key = (broker.resources / "models" / "key" / "tiny").read_bytes()
    assert len(key) == 32
    assert oct((broker.resources / "models" / "key" / "tiny").stat().st_mode)[-3:] == "600"
    assert holding(sealed, plaintext_probes(tiny_model_dir)) == []
    assert holding(sealed, [key]) == []
    assert load_checkpoint(sealed).revision == load_checkpoint(tiny_model_dir).revision


def test_a_sealed_model_opens_in_memory_into_the_model_it_sealed(
        sealed: Path, broker: Broker, tiny_model_dir: Path) -> None:
    before = len(broker.releases())
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
    params = SamplingParams(max_tokens=6, temperature=0.0)

    def greedy(config: EngineConfig) -> list[list[int]]:
        return [o.new_token_ids for o in LLMEngine(config).generate(prompts, params)]

    base = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=KV_BYTES)
    opened = EngineConfig(model=str(sealed), kv_cache_bytes=KV_BYTES, kbs_url=broker.server.url)
    assert greedy(opened) == greedy(base)
    released = broker.releases()[before:]
    assert [r["resource"] for r in released] == ["models/key/tiny"]
    assert released[0]["attester"] == "software"
    assert released[0]["measurements"]["model"] == load_checkpoint(sealed).revision  # type: ignore[index]


def test_the_admin_api_takes_only_the_admin_key(broker: Broker) -> None:
    url = f"{broker.server.url}/kbs/v0/resource/models/key/new"
    stranger = DeploymentKey.generate()
    assert httpx.post(url, content=b"k").status_code == 401
    assert httpx.post(url, content=b"k", headers={
        "Authorization": f"Bearer {admin_token(stranger)}"}).status_code == 401
    good = {"Authorization": f"Bearer {admin_token(broker.admin)}"}
    assert httpx.post(f"{broker.server.url}/kbs/v0/resource/models/key/..",
                      content=b"k", headers=good).status_code in (400, 404)
    assert httpx.post(f"{broker.server.url}/kbs/v0/resource-policy/models/key/new",
                      content=b'{"anyOf": []}', headers=good).status_code == 400
    assert not (broker.resources / "models" / "key" / "new").exists()
    with BackgroundServer(kbs_app(Verifier(DeploymentKey.generate(), {}), "dev",
                                  broker.root / "res")) as closed:
        r = httpx.post(f"{closed.url}/kbs/v0/resource/models/key/new", content=b"k",
                       headers=good)
        assert r.status_code == 403 and "--admin-key" in r.json()["error"]["message"]


def test_seal_model_refuses_in_one_line(broker: Broker, sealed: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--kbs", broker.server.url, "--admin-key", str(tmp_path / "other.pem")]
    assert main(["seal-model", str(sealed), "--resource", "a/b/c", *args]) == 2  # sealed already
    assert main(["seal-model", str(tmp_path), "--resource", "a/b", *args]) == 2
    assert main(["seal-model", str(tmp_path / "none"), "--resource", "a/b/c", *args]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(lines) == 3 and all(ln.startswith("aruntime: error:") for ln in lines), lines


def _serve(model: Path, kbs: str, root: Path, port: int) -> subprocess.Popen[str]:
    (root / "tmp").mkdir(exist_ok=True)
    return spawn(["--model", str(model), "--kbs", kbs, "--kv-cache-bytes", str(KV_BYTES),
                  "--max-model-len", "128", "--data-dir", str(root / "data"), "--log-level",
                  "warning"], port, {"TMPDIR": str(root / "tmp")}, cwd=root)


def test_serve_a_sealed_model_only_after_release(broker: Broker, sealed: Path,
                                                 tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(sealed, broker.server.url, tmp_path, port)
    try:
        url = wait_healthy(proc, port)
        r = httpx.post(f"{url}/v1/completions", timeout=30, json={
            "model": sealed.name, "prompt": "hello", "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert any(rel["resource"] == "models/key/tiny" for rel in broker.releases())
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert holding(tmp_path, plaintext_probes(tiny_model_dir)) == []
    assert holding(sealed.parent, plaintext_probes(tiny_model_dir)) == []


def test_serve_exits_2_in_one_line_when_the_release_policy_fails(
        broker: Broker, tiny_model_dir: Path, tmp_path: Path) -> None:
    policy = tmp_path / "hw.json"
    policy.write_text(json.dumps(HW_ONLY))
    out = tmp_path / "hw-sealed"
    broker.seal(tiny_model_dir, out, "models/key/hw", "--release-policy", str(policy))
    before = len(broker.releases())
    proc = _serve(out, broker.server.url, tmp_path, free_port())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("aruntime: error:"), err
    assert "403" in errors[0] and "release policy of models/key/hw" in errors[0]
    assert "Traceback" not in err
    assert len(broker.releases()) == before  # nothing released, nothing logged
    shutil.rmtree(out)
