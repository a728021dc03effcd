"""`aruntime attest policy example|check` and `aruntime chat --confidential` against a real
server: the example policy (digests taken from the server) passes, a hardware-only policy exits
2 with one line naming the claim, and a sealed chat prints the model's answer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model
from aruntime.serve.launch import BackgroundServer, background_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    config = EngineConfig(model=str(resolve_model("demo")), max_model_len=128,
                          kv_cache_bytes=4 * 1024 * 1024)
    with background_server(config, tmp_path_factory.mktemp("attest"),
                           served_model_name="tiny") as srv:
        yield srv


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aruntime.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_check_and_chat_under_the_example_policy(server: BackgroundServer,
                                                 tmp_path: Path) -> None:
    example = cli("attest", "policy", "example", server.url)
    assert example.returncode == 0, example.stderr
    policy = json.loads(example.stdout)
    assert policy["accepted_attesters"] == ["software"]
    assert policy["reference_values"]["model"] == [server.app.state.server.info.revision]
    path = tmp_path / "policy.json"
    path.write_text(example.stdout)
    checked = cli("attest", "check", server.url, "--policy", str(path))
    assert checked.returncode == 0 and "affirming" in checked.stdout, checked.stderr
    chatted = cli("chat", server.url, "--confidential", "--policy", str(path), "--max-tokens",
                  "4", "hello there")
    assert chatted.returncode == 0, chatted.stderr
    data: Path = server.app.state.server.data_dir
    record = json.loads((data / "evidence.jsonl").read_text().splitlines()[-1])
    assert record["attestation_ref"].startswith("hpke:sha256:")  # it came sealed


def test_a_hardware_only_policy_fails_in_one_line(server: BackgroundServer,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "hw.json"
    path.write_text(json.dumps({"policy_id": "hw", "accepted_attesters": ["tdx", "snp"]}))
    for args in (("attest", "check", server.url), ("chat", server.url, "--confidential", "x")):
        run = cli(*args, "--policy", str(path))
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, run.stderr
        assert "software attester is not accepted" in lines[0]


def test_a_bad_policy_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{")
    run = cli("attest", "check", "http://127.0.0.1:9", "--policy", str(path))
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
