"""A model served as a release, through a real server: `serve --release model=NAME` serves its
stable version; a rollout's candidate — another checkpoint, other weights — is loaded in an
engine of its own beside it and answers the share its rollout assigns (each conversation on one
version, the evidence naming the weights that answered); a shadow's copies go to it and change
no answer; an abort closes its engine; a promotion hands all traffic to it and closes the old
one; a checkpoint changed after `release add` never loads, and its rollout is aborted."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tiny_engine import config

from aruntime.adapt.artifact import Kind
from aruntime.adapt.registry import Registry
from aruntime.cli import main
from aruntime.cluster.factory import open_pool
from aruntime.durable.journal import open_journal
from aruntime.engine.demo import write_demo_model
from aruntime.evidence.signing import DeploymentKey, default_key_path
from aruntime.serve.launch import BackgroundServer, background_server
from aruntime.serve.released_model import ModelEngines

READY_S = 120.0  # an engine start, on a loaded 2-core machine


def add(data: Path, name: str, path: Path, stable: bool = False) -> str:
    journal = open_journal(data / "runs.db")
    try:
        registry = Registry(journal, data / "releases",
                            DeploymentKey.load_or_create(default_key_path(data)))
        version = registry.add(Kind.MODEL, name, path, by="test").version
        if stable:
            registry.move_alias(name, version, "stable", "test")
        return version
    finally:
        journal.close()


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[BackgroundServer, dict[str, str]]]:
    root = tmp_path_factory.mktemp("model-release")
    data = root / "data"
    other = write_demo_model(root / "other", size="tiny", seed=1)  # same tokenizer, new weights
    spoiled = write_demo_model(root / "spoiled", size="tiny", seed=2)
    versions = {"v1": add(data, "assistant", tiny_model_dir, stable=True),
                "v2": add(data, "assistant", other), "v3": add(data, "assistant", spoiled)}
    cfg = dataclasses.replace(config(tiny_model_dir), max_model_len=256)
    engines = ModelEngines("assistant",
                           lambda path: open_pool(dataclasses.replace(cfg, model=str(path))))
    with background_server(cfg, data, served_model_name="tiny", model_release=engines) as srv:
        yield srv, versions


def chat(server: BackgroundServer, http: httpx.Client, session: str) -> tuple[str, str]:
    """(the answer, the revision of the weights that gave it, from its evidence record)."""
    r = http.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": f"Tell me about {session}."}],
        "max_tokens": 8, "temperature": 0, "aruntime": {"session": session}})
    assert r.status_code == 200, r.text
    log = Path(server.app.state.server.data_dir) / "evidence.jsonl"
    record = json.loads(log.read_text().splitlines()[-1])
    return r.json()["choices"][0]["message"]["content"], record["model_revision"]


def engines(server: BackgroundServer) -> ModelEngines:
    models: ModelEngines = server.app.state.server.models
    return models


def start(http: httpx.Client, to: str, **options: Any) -> str:
    r = http.post("/v1/rollouts", json={"name": "assistant", "to": to,
                                        "analysis": {"metrics": []}, **options})
    assert r.status_code == 200, r.text
    rid: str = r.json()["rollout_id"]
    return rid


def retire(server: BackgroundServer, version: str) -> None:
    """The server's ticks close the version's engine once its last request has finished."""
    assert engines(server).wait_closed(version, READY_S), f"{version} is still open"


def test_a_candidate_model_answers_its_share_in_an_engine_of_its_own(
        served: tuple[BackgroundServer, dict[str, str]]) -> None:
    server, v = served
    sessions = [f"s{i}" for i in range(16)]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        before = {s: chat(server, http, s) for s in sessions}
        assert {rev for _, rev in before.values()} == {v["v1"]}
        rid = start(http, v["v2"], steps=[100], shadow=True)
        engines(server).sync()
        assert engines(server).wait_ready(v["v2"], READY_S) is not None
        assert {s: chat(server, http, s) for s in sessions} == before  # a shadow changes no answer
        assert http.post(f"/v1/rollouts/{rid}/abort", json={}).status_code == 200
        retire(server, v["v2"])

        rid = start(http, v["v2"], steps=[50])
        engines(server).sync()
        assert engines(server).wait_ready(v["v2"], READY_S) is not None
        during = {s: chat(server, http, s) for s in sessions}
        on_v2 = [s for s in sessions if during[s][1] == v["v2"]]
        assert 0 < len(on_v2) < len(sessions)  # both arms answer
        assert all(during[s] == before[s] for s in sessions if s not in on_v2)
        assert any(during[s][0] != before[s][0] for s in on_v2)  # other weights, other words
        assert all(chat(server, http, s) == during[s] for s in on_v2)  # a conversation stays on one

        server.app.state.server.adaptation.tick()
        body = http.get(f"/v1/rollouts/{rid}").json()
        assert body["status"] == "awaiting-approval", body  # a model's always waits
        r = http.post(f"/v1/rollouts/{rid}/approve", json={"approves": body["digest"]})
        assert r.status_code == 200, r.text
        retire(server, v["v1"])  # v2's engine took over, and the first one is closed
        assert {chat(server, http, s)[1] for s in sessions} == {v["v2"]}
        assert http.get("/health").status_code == 200
        assert "aruntime:worker_up" in http.get("/metrics").text


def test_a_checkpoint_changed_after_add_never_loads_and_its_rollout_aborts(
        served: tuple[BackgroundServer, dict[str, str]]) -> None:
    server, v = served
    registry = server.app.state.server.adaptation.registry
    weights = next(Path(registry.get("assistant", v["v3"]).stored).glob("*.safetensors"))
    with httpx.Client(base_url=server.url, timeout=60) as http:
        rid = start(http, v["v3"], steps=[50])
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        engines(server).sync()
        assert engines(server).wait_ready(v["v3"], 5.0) is None
        for _ in range(int(READY_S * 10)):
            body = http.get(f"/v1/rollouts/{rid}").json()
            if body["status"] == "aborted":
                break
            engines(server).wait_ready(v["v3"], 0.1)  # the loader's thread says why
        assert body["status"] == "aborted", body
        assert "changed since it was added" in " ".join(body["reasons"])


def test_serve_refuses_a_model_release_it_cannot_serve_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flags, says in ((["--release", "model=nope"], "no model release named 'nope'"),
                        (["--release", "model=a", "--model", "demo"], "drop --model")):
        assert main(["serve", "--data-dir", str(tmp_path), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
