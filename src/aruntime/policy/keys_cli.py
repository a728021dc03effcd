"""`aruntime keys create|list|revoke`: the API keys a server with `--auth keys` accepts, in
`keys.db` of its data directory. A key is printed once, at creation."""

from __future__ import annotations

import argparse
from pathlib import Path

from aruntime import paths
from aruntime.errors import UsageError
from aruntime.policy.api_keys import KEYS_FILE, KeyStore


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help=f"the server's data directory (default: {paths.data_dir()})")


def store_of(args: argparse.Namespace) -> KeyStore:
    return KeyStore((args.data_dir or paths.data_dir()) / KEYS_FILE)


def add_create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--principal", required=True)
    parser.add_argument("--role", action="append", default=[], metavar="ROLE")
    _data_dir(parser)


def run_create(args: argparse.Namespace) -> int:
    try:
        record, secret = store_of(args).create(args.tenant, args.principal, tuple(args.role))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"key id {record.key_id} for {record.principal} in tenant {record.tenant}"
          f"{' with roles ' + ', '.join(record.roles) if record.roles else ''}")
    print("the key (shown once; the server keeps only its salted hash):")
    print(secret.reveal())
    return 0


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    _data_dir(parser)


def run_list(args: argparse.Namespace) -> int:
    rows = [("ID", "TENANT", "PRINCIPAL", "ROLES", "CREATED", "REVOKED")]
    rows += [(r.key_id, r.tenant, r.principal, ",".join(r.roles) or "-", r.created_at,
              r.revoked_at or "-") for r in store_of(args).list()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def add_revoke_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key_id", metavar="ID")
    _data_dir(parser)


def run_revoke(args: argparse.Namespace) -> int:
    if not store_of(args).revoke(args.key_id):
        raise UsageError(f"no live key {args.key_id} (see `aruntime keys list`)")
    print(f"revoked {args.key_id}")
    return 0
