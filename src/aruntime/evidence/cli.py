"""`aruntime evidence verify FILE` and `aruntime evidence show REQUEST_ID`.

verify exits 0 when the chain (and every signature it could check) holds, 1 when it does not,
with one line per problem; a file or key it cannot read is bad input: exit 2, one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aruntime import paths
from aruntime.contracts import canonical_json
from aruntime.evidence import signing
from aruntime.evidence.chain import ChainResult
from aruntime.evidence.log import verify


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", type=Path, help="an evidence log (JSONL)")
    parser.add_argument(
        "--public-key", metavar="PEM", type=Path, default=None,
        help="the deployment's Ed25519 public key (default: keys/*.pub.pem beside FILE, "
             f"else in {paths.data_dir()})")
    parser.add_argument("--require-signatures", action="store_true",
                        help="an unsigned record is an error")
    parser.add_argument(
        "--anchor", metavar="HASH", default=None,
        help="a record hash the log must still contain, e.g. the `head` from "
             "GET /v1/evidence/key: catches records cut from the end")


def run_verify(args: argparse.Namespace) -> int:
    from aruntime.errors import UsageError

    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    key_path = args.public_key or _default_public_key(path)
    if args.require_signatures and key_path is None:
        raise UsageError("--require-signatures needs a public key: pass --public-key PEM")
    try:
        public_key = signing.load_public_key(key_path) if key_path else None
        result = verify(path, public_key, require_signatures=args.require_signatures,
                        anchor=args.anchor)
    except (signing.SigningError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if not result.ok:
        for error in result.errors:
            print(f"{path}: {error}")
        print(f"FAILED: {len(result.errors)} problem(s) in {result.count} records")
        return 1
    print(f"ok: {result.count} records, chain intact, {_signatures(result)}")
    return 0


def _default_public_key(log: Path) -> Path | None:
    """The key the server that wrote `log` keeps beside it, else the default data dir's."""
    for data_dir in (log.parent, paths.data_dir()):
        candidate = signing.public_key_path(signing.default_key_path(data_dir))
        if candidate.is_file():
            return candidate
    return None


def _signatures(result: ChainResult) -> str:
    if result.key_id is None:
        return "signatures not checked (no public key: pass --public-key PEM)"
    text = f"{result.signed} signatures valid"
    if result.unsigned:
        text += f", {result.unsigned} unsigned"
    return f"{text} (key {result.key_id})"


def add_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", metavar="REQUEST_ID")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--file", metavar="FILE", type=Path, default=None,
                       help="the evidence log (default: DATA_DIR/evidence.jsonl)")
    where.add_argument("--data-dir", metavar="DIR", type=Path, default=None,
                       help=f"the server's data directory (default: {paths.data_dir()})")


def run_show(args: argparse.Namespace) -> int:
    """Prints each record of the request as indented JSON (a request has one; a log that holds
    two is printed whole, so that the duplicate shows)."""
    from aruntime.errors import UsageError

    path: Path = args.file or (args.data_dir or paths.data_dir()) / "evidence.jsonl"
    needle = canonical_json(args.request_id)  # as the log spells it
    found = 0
    try:
        with open(path, "rb") as f:
            for raw in f:
                if needle not in raw:  # cheap filter before parsing
                    continue
                try:
                    data = json.loads(raw)
                except ValueError:
                    continue  # `verify` reports malformed lines
                if isinstance(data, dict) and data.get("request_id") == args.request_id:
                    print(json.dumps(data, indent=2, ensure_ascii=False))
                    found += 1
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    if not found:
        print(f"aruntime: no evidence record for request {args.request_id!r} in {path}",
              file=sys.stderr)
        return 1
    return 0
