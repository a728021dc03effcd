"""Retrieval releases: BM25 over a release's own documents, and a request that names one by
`aruntime.retrieval` through a real server — the passages found for its last user message are
set before its messages, its evidence names them and the version, a rollout moves which version
finds them, a shadow never changes the answer, and a version changed after `release add` is
refused before it serves."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tiny_engine import config

from aruntime.adapt.artifact import Kind, ReleaseError, check_artifact
from aruntime.adapt.retrieval import Retriever
from aruntime.serve.launch import BackgroundServer, background_server

DOCS = [
    {"id": "refunds", "text": "Refunds are paid within 14 days of a returned order."},
    {"id": "shipping", "text": "Shipping takes 3 to 5 working days; express takes one day."},
    {"id": "warranty", "text": "Every device has a two year warranty against defects."},
    {"id": "returns", "text": "Returns are accepted for 30 days; the order must be unused."},
]


def retriever(**settings: Any) -> Retriever:
    return Retriever.from_json({"documents": DOCS, **settings})


def test_bm25_ranks_by_the_query_terms_within_the_limits() -> None:
    r = retriever(top_k=2)
    found = r.search("How many days until my refund for a returned order?")
    assert [p.id for p in found] == ["refunds", "returns"]
    assert found[0].score > found[1].score > 0
    assert r.search("nothing matches zebra") == []  # no shared term: no passage
    assert [p.id for p in retriever(top_k=3, max_chars=80).search("order days")] == ["refunds"]
    assert retriever(min_score=100.0).search("refunds") == []
    text = r.context(found)
    assert text.splitlines()[0] == r.instruction and "[refunds] Refunds are paid" in text


@pytest.mark.parametrize("config_, says", [
    ([], "JSON object"),
    ({"documents": []}, "non-empty list"),
    ({"documents": [{"id": "a"}]}, "non-empty list"),
    ({"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, "unique"),
    ({"documents": DOCS, "top_k": 0}, "top_k"),
    ({"documents": DOCS, "top_k": True}, "top_k"),
    ({"documents": DOCS, "max_chars": 0}, "max_chars"),
    ({"documents": DOCS, "rank": "dense"}, "unknown retrieval settings: rank"),
])
def test_a_bad_retrieval_config_is_refused_with_what_is_wrong(
        config_: Any, says: str, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(config_))
    with pytest.raises(ReleaseError, match=says):
        check_artifact(Kind.RETRIEVAL, path)


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[BackgroundServer]:
    cfg = dataclasses.replace(config(tiny_model_dir), max_model_len=512)
    with background_server(cfg, tmp_path_factory.mktemp("retrieval"),
                           served_model_name="tiny") as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def add(http: httpx.Client, name: str, docs: list[dict[str, str]], **settings: Any) -> str:
    content = json.dumps({"documents": docs, **settings})
    r = http.post("/v1/releases", json={"kind": "retrieval", "name": name, "content": content})
    assert r.status_code == 200, r.text
    version: str = r.json()["version"]
    return version


def ask(http: httpx.Client, session: str, retrieval: str | None = "faq",
        question: str = "How many days until my refund?") -> httpx.Response:
    extra = {"session": session, **({"retrieval": retrieval} if retrieval else {})}
    return http.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": question}],
        "max_tokens": 6, "temperature": 0, "aruntime": extra})


def last_evidence(server: BackgroundServer) -> dict[str, Any]:
    path = Path(server.app.state.server.data_dir) / "evidence.jsonl"
    record: dict[str, Any] = json.loads(path.read_text().splitlines()[-1])
    return record


def test_the_passages_found_are_set_before_the_messages_and_named_in_evidence(
        server: BackgroundServer, http: httpx.Client) -> None:
    v1 = add(http, "faq", DOCS, top_k=2)
    http.post("/v1/releases/faq/aliases", json={"version": v1, "alias": "stable"})
    bare = ask(http, "a", retrieval=None)
    found = ask(http, "a")
    assert bare.status_code == found.status_code == 200, found.text
    assert found.json()["usage"]["prompt_tokens"] > bare.json()["usage"]["prompt_tokens"] + 20
    record = last_evidence(server)
    assert record["retrieved"] == ["faq/refunds", "faq/returns"]
    assert record["releases"]["retrieval"] == f"faq@{v1}"
    nothing = ask(http, "a", question="zebra?")  # no passage: the messages alone
    assert nothing.status_code == 200 and last_evidence(server)["retrieved"] is None


def test_a_rollout_moves_the_version_that_finds_passages_and_a_shadow_changes_nothing(
        server: BackgroundServer, http: httpx.Client) -> None:
    stable = http.get("/v1/releases/faq").json()["aliases"]["stable"]
    wider = add(http, "faq", DOCS, top_k=3)
    answers = [ask(http, f"s{i}").json()["choices"][0]["message"]["content"] for i in range(6)]
    r = http.post("/v1/rollouts", json={"name": "faq", "to": wider, "steps": [100],
                                        "shadow": True, "analysis": {"metrics": []}})
    assert r.status_code == 200, r.text
    shadowed = [ask(http, f"s{i}").json()["choices"][0]["message"]["content"]
                for i in range(6)]
    assert shadowed == answers and last_evidence(server)["releases"]["retrieval"] == \
        f"faq@{stable}"
    rid = r.json()["rollout_id"]
    assert http.post(f"/v1/rollouts/{rid}/abort", json={}).status_code == 200
    r = http.post("/v1/rollouts", json={"name": "faq", "to": wider, "steps": [100],
                                        "analysis": {"metrics": []}})
    assert ask(http, "s0").status_code == 200
    record = last_evidence(server)
    assert record["releases"]["retrieval"] == f"faq@{wider}" and len(record["retrieved"]) == 3
    assert http.post(f"/v1/rollouts/{r.json()['rollout_id']}/abort",
                     json={}).status_code == 200


def test_a_retrieval_version_changed_after_add_is_refused_before_it_serves(
        server: BackgroundServer, http: httpx.Client) -> None:
    v = add(http, "tampered", DOCS[:2])
    http.post("/v1/releases/tampered/aliases", json={"version": v, "alias": "stable"})
    stored = Path(server.app.state.server.data_dir) / "releases" / v.replace(":", "-")
    stored.chmod(0o644)
    stored.write_text(json.dumps({"documents": [{"id": "x", "text": "refund lies"}]}))
    r = ask(http, "t", retrieval="tampered")
    assert r.status_code == 400 and r.json()["error"]["code"] == "release_unavailable"
    assert "changed since it was added" in r.json()["error"]["message"]
    r = ask(http, "t", retrieval="bad name")
    assert r.status_code == 400 and r.json()["error"]["param"] == "aruntime.retrieval"
