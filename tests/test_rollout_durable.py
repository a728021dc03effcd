"""A rollout survives its controller: `aruntime serve` (a real process) runs the controller;
the rollout is started and moved with the `aruntime release` / `aruntime rollout` commands;
SIGKILL mid-rollout and a restart on the same data directory resume the same step, and every
conversation is on the same version as before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_process import free_port, spawn, wait_healthy

KV_BYTES = 2 * 1024 * 1024
# 30 of the candidate's requests a measurement: step 1 (10%) takes ~300 requests; at step 2
# (50%) what is left of a batch and the 12 conversations give it ~16: nothing moves meanwhile
ANALYSIS = {"metrics": [{"name": "errors", "measure": "error_rate", "max": 0.05, "window": 15}]}


def cli(home: Path, *args: str) -> Any:
    run = subprocess.run([sys.executable, "-m", "aruntime.cli", *args], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "ARUNTIME_HOME": str(home)})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout) if run.stdout.strip().startswith(("{", "[")) else run.stdout


def serve(model: Path, home: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = spawn(["--model", str(model), "--kv-cache-bytes", str(KV_BYTES), "--max-model-len",
                  "128", "--served-model-name", "tiny", "--log-level", "warning"], port,
                 {"ARUNTIME_HOME": str(home)})
    return proc, wait_healthy(proc, port)


def versions_of(url: str, home: Path, sessions: list[str]) -> dict[str, str]:
    ids = {}
    for s in sessions:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "aruntime": {"prompt": "support", "session": s}})
        assert r.status_code == 200, r.text
        ids[r.json()["id"]] = s
    records = [json.loads(line) for line in
               (home / "data" / "evidence.jsonl").read_text().splitlines()]
    return {ids[e["request_id"]]: e["releases"]["prompt"] for e in records
            if e["request_id"] in ids}


def test_sigkill_mid_rollout_then_restart_resumes_the_same_step(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    for i, text in enumerate(("You answer briefly.", "You answer kindly.")):
        (tmp_path / f"p{i}.txt").write_text(text)
    v0 = cli(home, "release", "add", "prompt", "support", str(tmp_path / "p0.txt"))["version"]
    v1 = cli(home, "release", "add", "prompt", "support", str(tmp_path / "p1.txt"))["version"]
    cli(home, "release", "alias", "support", v0, "stable")
    (tmp_path / "analysis.json").write_text(json.dumps(ANALYSIS))
    proc, url = serve(tiny_model_dir, home)
    try:
        rollout = cli(home, "rollout", "start", "support", "--to", v1, "--steps", "10,50,100",
                      "--analysis", str(tmp_path / "analysis.json"), "--server", url)
        rid = rollout["rollout_id"]
        n, deadline = 0, time.monotonic() + 180
        while httpx.get(f"{url}/v1/rollouts/{rid}", timeout=30).json()["step"] == 0:
            assert time.monotonic() < deadline, "the first step never completed"
            versions_of(url, home, [f"warm-{n}-{i}" for i in range(20)])
            n += 1
        sessions = [f"conversation-{i}" for i in range(12)]
        before = versions_of(url, home, sessions)
        step = cli(home, "rollout", "status", rid, "--server", url)["step"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    saved = cli(home, "rollout", "status", rid)  # read from the journal, no server
    assert saved["step"] == step == 1 and saved["status"] == "progressing"
    proc, url = serve(tiny_model_dir, home)
    try:
        again = cli(home, "rollout", "status", rid, "--server", url)
        assert again["step"] == step and again["weight"] == 50
        assert versions_of(url, home, sessions) == before
        assert {f"support@{v0}", f"support@{v1}"} == set(before.values())
        events = [e["type"] for e in again["events"]]
        assert events[0] == "started" and "step" in events
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("args", [["release", "verify", "nothing"],
                                  ["release", "served", "x", "--at", "yesterday"],
                                  ["rollout", "start", "x", "--to", "y", "--steps", "a,b"]])
def test_the_commands_refuse_in_one_line(tmp_path: Path, args: list[str]) -> None:
    run = subprocess.run([sys.executable, "-m", "aruntime.cli", *args], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "ARUNTIME_HOME": str(tmp_path)})
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
