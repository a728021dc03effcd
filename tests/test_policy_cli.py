"""`aruntime policy check|test|explain|sign` as a user runs them: the version and the count of a
good bundle, one line and exit 2 for a bad one, a table's pass/fail rows with exit 0 or 1 (2 for
a bad table), and an explanation that names the determining policy's `@id`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aruntime.cli import main
from aruntime.evidence.signing import DeploymentKey

POLICY = """
@id("own-tenant")
permit (principal, action, resource) when { context.tenant == principal.tenant };
@id("no-guests-on-large")
forbid (principal, action == ARuntime::Action::"invoke_model", resource == ARuntime::Model::"large")
when { principal.roles.contains("guest") };
"""


def row(expect: str, roles: list[str], model: str = "large", tenant: str = "a",
        **extra: Any) -> dict[str, Any]:
    return {"principal": {"id": "u1", "tenant": "a", "roles": roles}, "action": "invoke_model",
            "resource": {"type": "Model", "id": model, "attrs": {"name": model}},
            "context": {"tenant": tenant}, "expect": expect, **extra}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "policies"
    path.mkdir()
    (path / "base.cedar").write_text(POLICY)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    rc = main(["policy", *argv])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err.splitlines()


def test_check_prints_the_version_and_the_count(bundle: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "check", str(bundle))
    assert rc == 0 and out[0].startswith(f"ok: {bundle}: 2 policies in 1 file(s), version sha256:")
    assert out[0].endswith("unsigned")
    key = DeploymentKey.load_or_create(tmp_path / "keys" / "k.pem")
    pub = str(tmp_path / "keys" / "k.pub.pem")
    rc, _, err = run(capsys, "check", str(bundle), "--policy-key", pub)
    assert rc == 2 and len(err) == 1 and "unsigned" in err[0]
    rc, out, _ = run(capsys, "sign", str(bundle), "--key", str(tmp_path / "keys" / "k.pem"))
    assert rc == 0 and key.key_id in out[0] and (bundle / "bundle.sig").exists()
    rc, out, _ = run(capsys, "check", str(bundle), "--policy-key", pub)
    assert rc == 0 and out[0].endswith(f"signed by {key.key_id}, verified")


@pytest.mark.parametrize("text", ["permit (principal, action, resource",
                                  'permit (principal, action == ARuntime::Action::"fly", '
                                  "resource);"])
def test_a_bad_bundle_is_one_line_exit_2(tmp_path: Path, text: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.cedar").write_text(text)
    rc, out, err = run(capsys, "check", str(tmp_path / "bad.cedar"))
    assert (rc, out, len(err)) == (2, [], 1) and err[0].startswith("aruntime: error: ")
    rc, _, err = run(capsys, "sign", str(tmp_path / "bad.cedar"), "--key",
                     str(tmp_path / "no-such-key.pem"))
    assert rc == 2 and len(err) == 1 and not (tmp_path / "bad.cedar.sig").exists()


def test_a_table_passes_or_fails_by_row(bundle: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "expect.jsonl"
    rows = [row("allow", ["user"]), row("deny", ["guest"]), row("deny", ["user"], tenant="b"),
            row("allow", ["guest"], model="small", name="guests may use small")]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out, _ = run(capsys, "test", str(bundle), str(table))
    assert rc == 0 and out[-1].startswith("4 rows: 4 passed, 0 failed")
    assert out[1].startswith("pass deny (no-guests-on-large): row 2")
    assert out[3].endswith("row 4, guests may use small")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([row("allow", ["guest"]), row("allow", ["user"])]))
    rc, out, _ = run(capsys, "test", str(bundle), str(wrong))
    assert rc == 1 and out[-1].startswith("2 rows: 1 passed, 1 failed")
    assert out[0].startswith("FAIL expected allow, got deny (no-guests-on-large): row 1")


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not JSON"),
    (json.dumps({"rows": []}), "array of rows"),
    (json.dumps([row("maybe", [])]), "row 1: `expect` must be allow or deny"),
    (json.dumps([{**row("allow", []), "action": "fly"}]), "row 1: `action` must be one of"),
    (json.dumps([{**row("allow", []), "principal": {"id": "u"}}]), "`tenant`"),
])
def test_a_bad_table_is_exit_2(bundle: Path, tmp_path: Path, content: str, message: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.json").write_text(content)
    rc, out, err = run(capsys, "test", str(bundle), str(tmp_path / "t.json"))
    assert (rc, out, len(err)) == (2, [], 1) and message in err[0]


def test_explain_names_the_determining_id(bundle: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    who = ["--principal", "u1", "--tenant", "a", "--action", "invoke_model"]
    rc, out, _ = run(capsys, "explain", str(bundle), *who, "--role", "guest",
                     "--resource", "Model::large", "--attr", "name=large")
    assert rc == 0 and out[:3] == ["decision: deny",
                                   'determining: policy1 (@id("no-guests-on-large"))',
                                   "errors: none"]
    assert out[3].startswith("version: sha256:") and out[4] == "signature: unsigned"
    rc, out, _ = run(capsys, "explain", str(bundle), *who, "--resource", 'Model::"small"',
                     "--context", '{"tenant": "b"}')
    assert rc == 0 and out[:2] == ["decision: deny",
                                   "determining: none: no permit applies (default deny)"]
    rc, _, err = run(capsys, "explain", str(bundle), *who, "--resource", "small")
    assert rc == 2 and "TYPE::ID" in err[0]
