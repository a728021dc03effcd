"""Signed policy bundles and their reload without a restart: a tampered or unparsable bundle
keeps the previous policy (one warning, a failure counted), a valid new one takes effect — in
the library and through a real server (demo model) whose model list and decisions change after
`reloader.check()`. Forbid wins, default deny, log-only never blocks."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aruntime.cli import main
from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model
from aruntime.evidence.signing import DeploymentKey
from aruntime.policy import policy_args
from aruntime.policy.bundle import bundle_digest, load_bundle, read_files, signature_path
from aruntime.policy.bundle_signature import SignatureError, write_signature
from aruntime.policy.cedar_authorizer import CedarAuthorizer, PolicyError
from aruntime.policy.decision import Action, Resource
from aruntime.policy.identity import Principal
from aruntime.policy.reloader import Outcome, PolicyReloader
from aruntime.serve.launch import BackgroundServer, background_server

OWN = '@id("own-tenant")\npermit (principal, action, resource) when { context.tenant == principal.tenant };\n'  # noqa: E501
NO_MODELS = ('@id("models-closed")\nforbid (principal, action == ARuntime::Action::"invoke_model",'
             " resource);\n")
ALICE = Principal("alice", "a", frozenset({"user"}))
MODEL = Resource("Model", "tiny", {"name": "tiny"})


def write_bundle(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("_", ".")).write_text(text)
    return directory


def sign(path: Path, key: DeploymentKey) -> None:
    write_signature(signature_path(path), bundle_digest(read_files(path)), key)


@pytest.fixture(scope="module")
def key() -> DeploymentKey:
    return DeploymentKey.generate()


def test_a_bundle_is_known_by_a_digest_of_its_files(tmp_path: Path) -> None:
    one = load_bundle(write_bundle(tmp_path / "b", base_cedar=OWN, models_cedar=NO_MODELS))
    assert (one.policy.size, one.files, one.signature) == (2, ("base.cedar", "models.cedar"),
                                                           "unsigned")
    same = load_bundle(write_bundle(tmp_path / "c", base_cedar=OWN, models_cedar=NO_MODELS))
    assert same.version == one.version  # names and bytes, not where it lives
    renamed = load_bundle(write_bundle(tmp_path / "d", a_cedar=OWN, models_cedar=NO_MODELS))
    assert renamed.version != one.version
    single = load_bundle(write_bundle(tmp_path / "e", own_cedar=OWN) / "own.cedar")
    assert single.policy.size == 1 and single.version.startswith("sha256:")


def test_signatures_are_checked_against_the_trusted_key(tmp_path: Path,
                                                        key: DeploymentKey) -> None:
    path = write_bundle(tmp_path / "b", base_cedar=OWN)
    with pytest.raises(SignatureError, match="unsigned"):
        load_bundle(path, key.public_key)
    sign(path, key)
    assert load_bundle(path, key.public_key).signature == f"signed by {key.key_id}, verified"
    with pytest.raises(SignatureError, match="not by the trusted key"):
        load_bundle(path, DeploymentKey.generate().public_key)
    (path / "base.cedar").write_text(OWN + NO_MODELS)  # changed after signing
    for trusted in (key.public_key, None):  # tampering is refused with or without a key
        with pytest.raises(SignatureError, match="changed after it was signed"):
            load_bundle(path, trusted)
    sig = signature_path(path)
    sign(path, key)
    sig.write_text(sig.read_text().replace('"signature": "', '"signature": "A'))
    with pytest.raises(SignatureError):
        load_bundle(path, key.public_key)


def test_forbid_wins_and_nothing_permitted_is_denied(tmp_path: Path) -> None:
    bundle = load_bundle(write_bundle(tmp_path / "b", base_cedar=OWN, models_cedar=NO_MODELS))
    a = CedarAuthorizer(bundle.policy)
    forbidden = a.decide(ALICE, Action.INVOKE_MODEL, MODEL)
    assert (forbidden.allowed, forbidden.determining) == (False, ("models-closed",))
    elsewhere = a.decide(ALICE, Action.CALL_TOOL, Resource("Tool", "t"), {"tenant": "b"})
    assert (elsewhere.allowed, elsewhere.determining) == (False, ())  # default deny
    assert a.decide(ALICE, Action.CALL_TOOL, Resource("Tool", "t")).allowed


def test_an_empty_bundle_denies_everything(tmp_path: Path) -> None:
    bundle = load_bundle(write_bundle(tmp_path / "b", none_cedar="// nothing yet\n"))
    d = CedarAuthorizer(bundle.policy).decide(ALICE, Action.INVOKE_MODEL, MODEL)
    assert (bundle.policy.size, d.allowed) == (0, False)  # not the built-in policy


def test_log_only_never_blocks_but_says_deny(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", base_cedar=OWN, models_cedar=NO_MODELS)
    args = argparse.Namespace(policy=path, policy_mode="log-only", policy_key=None)
    authorizer, reloader = policy_args.authorizer_from(args)
    assert reloader is not None and reloader.authorizer is authorizer
    d = authorizer.decide(ALICE, Action.INVOKE_MODEL, MODEL)
    assert (d.allowed, d.enforced, d.evidence()["mode"]) == (False, False, "log-only")


def test_refused_bundles_keep_the_previous_set(tmp_path: Path, key: DeploymentKey,
                                               caplog: pytest.LogCaptureFixture) -> None:
    path = write_bundle(tmp_path / "b", base_cedar=OWN)
    sign(path, key)
    reloader = PolicyReloader.open(path, trusted=key.public_key, interval_s=3600)
    before = reloader.authorizer.version
    assert reloader.check() is Outcome.UNCHANGED
    (path / "base.cedar").write_text(OWN + NO_MODELS)  # tampered: not re-signed
    with caplog.at_level(logging.WARNING, "aruntime.policy"):
        assert reloader.check() is Outcome.REFUSED
        assert reloader.check() is Outcome.UNCHANGED  # the same bad bytes: tried once
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"policy bundle {path} refused; version {before} stays in "
                                  f"force: {signature_path(path)}: the bundle changed after it "
                                  "was signed")
    (path / "base.cedar").write_text("permit (principal, action, resource) when { 1 + };")
    sign(path, key)  # signed, but it does not parse
    assert reloader.check() is Outcome.REFUSED
    assert (reloader.authorizer.version, dict(reloader.failures)) == (
        before, {"signature": 1, "policy": 1})
    assert reloader.authorizer.decide(ALICE, Action.INVOKE_MODEL, MODEL).allowed
    (path / "base.cedar").write_text(OWN + NO_MODELS)
    sign(path, key)
    assert reloader.check() is Outcome.RELOADED
    assert reloader.authorizer.version == load_bundle(path).version != before
    assert not reloader.authorizer.decide(ALICE, Action.INVOKE_MODEL, MODEL).allowed


def test_the_watcher_thread_reloads_a_changed_file(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", base_cedar=OWN) / "base.cedar"
    reloader = PolicyReloader.open(path, interval_s=0.01)
    reloader.start()
    try:
        path.write_text(OWN + NO_MODELS)
        assert reloader.wait_for(load_bundle(path).version, timeout=30)
    finally:
        reloader.stop()
    assert reloader.reloads == 1


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           key: DeploymentKey) -> Iterator[tuple[BackgroundServer, PolicyReloader, Path]]:
    path = write_bundle(tmp_path_factory.mktemp("bundle"), base_cedar=OWN)
    sign(path, key)
    reloader = PolicyReloader.open(path, trusted=key.public_key, interval_s=3600)
    config = EngineConfig(model=str(resolve_model("demo")), max_model_len=256,
                          kv_cache_bytes=8 * 1024 * 1024)
    with background_server(config, tmp_path_factory.mktemp("data"), served_model_name="tiny",
                           policy_reloader=reloader) as srv:
        yield srv, reloader, path


def metric(http: httpx.Client, series: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(series + " ") or line.startswith(series + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")


def test_a_real_server_reloads_without_a_restart(
        served: tuple[BackgroundServer, PolicyReloader, Path], key: DeploymentKey) -> None:
    srv, reloader, path = served
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, "temperature": 0}
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["tiny"]
        (path / "base.cedar").write_text(OWN + NO_MODELS)  # tampered
        assert reloader.check() is Outcome.REFUSED
        assert http.get("/v1/models").json()["data"] != []
        assert metric(http, 'aruntime:policy_reload_failures_total{reason="signature"}') == 1
        good = (path / "base.cedar").read_text()
        (path / "base.cedar").write_text(good + "forbid (principal, action, resource")
        sign(path, key)  # signed, but unparsable
        assert reloader.check() is Outcome.REFUSED
        assert http.get("/v1/models").json()["data"] != []
        assert metric(http, 'aruntime:policy_reload_failures_total{reason="policy"}') == 1
        (path / "base.cedar").write_text(good)
        sign(path, key)  # now a valid new version
        assert reloader.check() is Outcome.RELOADED
        assert http.get("/v1/models").json()["data"] == []
        denied = http.post("/v1/completions", json=body)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "policy_denied"
        assert metric(http, "aruntime:policy_reloads_total") == 1
        info = next(line for line in http.get("/metrics").text.splitlines()
                    if line.startswith("aruntime:policy_info{"))
        assert reloader.authorizer.version in info and "verified" in info
        assert srv.app.state.server.authorizer is reloader.authorizer


def test_serve_refuses_a_bad_bundle_in_one_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_bundle(tmp_path / "b", base_cedar="permit (principal, action, resource")
    assert main(["serve", "--model", "demo", "--data-dir", str(tmp_path / "d"),
                 "--policy", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aruntime: error: --policy: ")
    with pytest.raises(PolicyError):
        load_bundle(bad)
