"""`aruntime policy check|test|explain|sign`: policy as code on the command line. A bundle that
is refused, a bad table or a bad argument is one line and exit status 2; `test` exits 1 when a
row's decision is not the one expected."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aruntime.errors import UsageError, first_line
from aruntime.policy.bundle import PolicyBundle, load_bundle, read_files, signature_path
from aruntime.policy.cedar_authorizer import CedarAuthorizer, PolicyError
from aruntime.policy.decision import Action, Resource
from aruntime.policy.identity import Principal


def _bundle_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, metavar="PATH",
                        help="a .cedar file, or a directory of them (and schema.cedarschema)")
    parser.add_argument("--policy-key", type=Path, default=None, metavar="PEM",
                        help="the Ed25519 public key the bundle's signature must verify with")


def _load(args: argparse.Namespace) -> PolicyBundle:
    from aruntime.evidence.signing import SigningError, load_public_key

    try:
        trusted = load_public_key(args.policy_key) if args.policy_key is not None else None
        return load_bundle(args.path, trusted)
    except (PolicyError, SigningError) as exc:
        raise UsageError(first_line(exc)) from None


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    _bundle_argument(parser)


def run_check(args: argparse.Namespace) -> int:
    bundle = _load(args)
    print(f"ok: {bundle.describe()}")
    return 0


def add_test_arguments(parser: argparse.ArgumentParser) -> None:
    _bundle_argument(parser)
    parser.add_argument("table", type=Path, metavar="TABLE",
                        help="expected decisions: a .json array or a .jsonl file of rows "
                             "{principal, action, resource, context, expect}")


def run_test(args: argparse.Namespace) -> int:
    from aruntime.policy.decision_table import TableError, read_table, run_table

    bundle = _load(args)
    try:
        rows = read_table(args.table)
    except TableError as exc:
        raise UsageError(first_line(exc)) from None
    results = run_table(CedarAuthorizer(bundle.policy), rows)
    for r in results:
        d = r.decision
        why = ", ".join(d.determining) or "no policy"
        verdict = "pass" if r.passed else f"FAIL expected {r.row.expect}, got"
        print(f"{verdict} {d.word} ({why}): row {r.row.number}, {r.row.label}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results)} rows: {len(results) - failed} passed, {failed} failed "
          f"(version {bundle.version})")
    return 1 if failed else 0


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    _bundle_argument(parser)
    parser.add_argument("--principal", required=True, metavar="ID")
    parser.add_argument("--tenant", required=True, metavar="T")
    parser.add_argument("--role", action="append", default=[], metavar="R",
                        help="a role of the principal (repeatable)")
    parser.add_argument("--action", required=True, choices=[a.value for a in Action])
    parser.add_argument("--resource", required=True, metavar="TYPE::ID",
                        help='e.g. Model::small, Tool::refund or ARuntime::Run::"r1"')
    parser.add_argument("--attr", action="append", default=[], metavar="K=V",
                        help="a resource attribute (repeatable); V is read as JSON when it "
                             "parses (true, 3, [\"a\"]), else as text")
    parser.add_argument("--context", default=None, metavar="JSON",
                        help='request facts as a JSON object, e.g. \'{"findings": ["email"]}\'')


def _resource(text: str, attrs: list[str]) -> Resource:
    type_, sep, id_ = text.removeprefix("ARuntime::").partition("::")
    id_ = id_[1:-1] if len(id_) >= 2 and id_[0] == id_[-1] == '"' else id_
    if not sep or not type_ or not id_:
        raise UsageError(f"--resource {text}: expected TYPE::ID, e.g. Model::small")
    values: dict[str, Any] = {}
    for item in attrs:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--attr {item}: expected K=V")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return Resource(type_, id_, values)


def _context(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--context: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError("--context: must be a JSON object")
    return value


def run_explain(args: argparse.Namespace) -> int:
    from aruntime.policy.explain import explain

    resource = _resource(args.resource, args.attr)
    context = _context(args.context)
    bundle = _load(args)
    who = Principal(args.principal, args.tenant, frozenset(args.role))
    for line in explain(bundle.policy, who, Action(args.action), resource, context).lines():
        print(line)
    print(f"signature: {bundle.signature}")
    return 0


def add_sign_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, metavar="PATH",
                        help="the bundle: a .cedar file, or a directory of them")
    parser.add_argument("--key", type=Path, required=True, metavar="KEYFILE",
                        help="the Ed25519 private key (PEM), e.g. the deployment key "
                             "keys/evidence-ed25519.pem under the data directory")


def run_sign(args: argparse.Namespace) -> int:
    """Sign the bundle as it is now; it is parsed and validated first (a bundle that would be
    refused is not signed)."""
    from aruntime.evidence.signing import DeploymentKey, SigningError
    from aruntime.policy.bundle import bundle_digest, parse_files
    from aruntime.policy.bundle_signature import write_signature

    try:
        key = DeploymentKey.load(args.key)
        files = read_files(args.path)
        digest = bundle_digest(files)
        policy = parse_files(args.path, files, digest)
    except (PolicyError, SigningError) as exc:
        raise UsageError(first_line(exc)) from None
    path = signature_path(args.path)
    write_signature(path, digest, key)
    print(f"signed {args.path} ({policy.size} policies, version {digest}) with {key.key_id}: "
          f"{path}")
    return 0
