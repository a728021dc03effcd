"""`aruntime evidence verify|show` as a user runs them: a subprocess, its output, its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aruntime.contracts import canonical_json
from aruntime.evidence.log import EvidenceLog, output_digest
from aruntime.evidence.signing import DeploymentKey, default_key_path, public_key_path


def _record(i: int) -> dict[str, object]:
    return {"request_id": f"cmpl-{i}", "tenant": "default", "model": "tiny",
            "model_revision": "sha256:" + "ab" * 32, "engine_version": "aruntime-engine/0.1.0",
            "hardware": "cpu", "precision": "float32",
            "output_digest": output_digest([f"out {i}"], b"0123456789abcdef")}


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """ARUNTIME_HOME for the subprocess, so that the defaults never read the user's files."""
    return tmp_path / "home"


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """A data directory as the server leaves it: the signed log and the key files."""
    data = tmp_path / "data"
    key = DeploymentKey.load_or_create(default_key_path(data))
    with EvidenceLog(data / "evidence.jsonl", key) as log:
        for i in range(4):
            log.append(_record(i))
    return data


def aruntime(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARUNTIME_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "aruntime.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_verify_ok_with_the_key_beside_the_log(home: Path, data_dir: Path) -> None:
    key_id = DeploymentKey.load_or_create(default_key_path(data_dir)).key_id
    r = aruntime(home, "evidence", "verify", data_dir / "evidence.jsonl", "--require-signatures")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == f"ok: 4 records, chain intact, 4 signatures valid (key {key_id})\n"


def test_verify_reports_every_problem_with_its_line(home: Path, data_dir: Path) -> None:
    log = data_dir / "evidence.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    tampered = json.loads(lines[1])
    tampered["hardware"] = "h100"
    unsigned = json.loads(lines[3])
    del unsigned["signature"]
    log.write_bytes(lines[0] + canonical_json(tampered) + b"\n" + lines[2]
                    + canonical_json(unsigned) + b"\n")
    r = aruntime(home, "evidence", "verify", log, "--require-signatures")
    assert r.returncode == 1 and r.stderr == ""
    assert r.stdout.splitlines() == [
        f"{log}: line 2: hash mismatch: the record was altered after it was written",
        f"{log}: line 4: unsigned record",
        "FAILED: 2 problem(s) in 4 records",
    ]


def test_verify_with_another_public_key_names_both_keys(home: Path, data_dir: Path,
                                                        tmp_path: Path) -> None:
    other = DeploymentKey.load_or_create(tmp_path / "other" / "k.pem")
    r = aruntime(home, "evidence", "verify", data_dir / "evidence.jsonl",
                 "--public-key", public_key_path(tmp_path / "other" / "k.pem"))
    assert r.returncode == 1
    assert r.stdout.count("signed by another key") == 4 and other.key_id in r.stdout


def test_verify_truncated_and_reordered_logs_fail(home: Path, data_dir: Path) -> None:
    log = data_dir / "evidence.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    head = json.loads(lines[-1])["hash"]
    log.write_bytes(b"".join(lines[:2]))
    r = aruntime(home, "evidence", "verify", log, "--anchor", head)
    assert r.returncode == 1 and f"no record has the anchor hash {head}" in r.stdout
    log.write_bytes(b"".join([lines[1], lines[0]]))
    r = aruntime(home, "evidence", "verify", log)
    assert r.returncode == 1
    assert f"{log}: line 1: prev_hash is not the genesis hash" in r.stdout


def test_verify_without_a_key_checks_the_chain_only(home: Path, data_dir: Path,
                                                    tmp_path: Path) -> None:
    moved = tmp_path / "copy.jsonl"
    moved.write_bytes((data_dir / "evidence.jsonl").read_bytes())
    r = aruntime(home, "evidence", "verify", moved)
    assert r.returncode == 0
    assert r.stdout == ("ok: 4 records, chain intact, signatures not checked "
                        "(no public key: pass --public-key PEM)\n")
    r = aruntime(home, "evidence", "verify", moved, "--require-signatures")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("aruntime: error: --require-signatures needs a public key: "
                        "pass --public-key PEM\n")


@pytest.mark.parametrize("case", ["missing-log", "missing-key", "bad-key"])
def test_verify_bad_input_is_exit_2_one_line(home: Path, data_dir: Path, tmp_path: Path,
                                             case: str) -> None:
    log, key = data_dir / "evidence.jsonl", tmp_path / "key.pem"
    if case == "missing-log":
        log = tmp_path / "nope.jsonl"
    elif case == "bad-key":
        key.write_text("not a key\n")
    args = ["evidence", "verify", log] + ([] if case == "missing-log" else ["--public-key", key])
    r = aruntime(home, *args)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("aruntime: error: ")
    assert {"missing-log": "no such file", "missing-key": "cannot read",
            "bad-key": "not a PEM public key"}[case] in r.stderr


def test_show_prints_the_record(home: Path, data_dir: Path) -> None:
    r = aruntime(home, "evidence", "show", "cmpl-2", "--data-dir", data_dir)
    assert (r.returncode, r.stderr) == (0, "")
    shown = json.loads(r.stdout)
    assert shown == json.loads((data_dir / "evidence.jsonl").read_bytes().splitlines()[2])
    assert r.stdout.startswith("{\n  ")  # pretty, not the log's one line
    r = aruntime(home, "evidence", "show", "cmpl-0", "--file", data_dir / "evidence.jsonl")
    assert r.returncode == 0 and json.loads(r.stdout)["request_id"] == "cmpl-0"


def test_show_default_file_is_in_the_home_data_dir(home: Path) -> None:
    with EvidenceLog(home / "data" / "evidence.jsonl") as log:
        log.append(_record(7))
    r = aruntime(home, "evidence", "show", "cmpl-7")
    assert r.returncode == 0 and json.loads(r.stdout)["request_id"] == "cmpl-7"


def test_show_not_found_and_missing_file(home: Path, data_dir: Path) -> None:
    log = data_dir / "evidence.jsonl"
    r = aruntime(home, "evidence", "show", "cmpl-9", "--file", log)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"aruntime: no evidence record for request 'cmpl-9' in {log}\n"
    r = aruntime(home, "evidence", "show", "cmpl-1")  # the home has no log
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"aruntime: error: {home / 'data' / 'evidence.jsonl'}: no such file\n"
