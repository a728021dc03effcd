"""`aruntime serve`'s quota flags: limits for every tenant, and a file of per-tenant ones."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aruntime.errors import UsageError
from aruntime.policy.quotas import Limits, Quotas


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("per-tenant quotas (429 with Retry-After past them)")
    group.add_argument("--tenant-rpm", type=int, default=None, metavar="N",
                       help="requests per minute for each tenant (default: unlimited)")
    group.add_argument("--tenant-tpm", type=int, default=None, metavar="N",
                       help="tokens per minute (prompt + max_tokens, settled on use)")
    group.add_argument("--tenant-max-concurrent", type=int, default=None, metavar="N",
                       help="requests in flight at once for each tenant")
    group.add_argument("--quota-file", type=Path, default=None, metavar="FILE",
                       help='JSON {"TENANT": {"rpm": N, "tpm": N, "max_concurrent": N}}: '
                            "a tenant's own limits in place of the flags'")


def quotas_from(args: argparse.Namespace) -> Quotas:
    try:
        default = Limits(args.tenant_rpm, args.tenant_tpm, args.tenant_max_concurrent)
        overrides = _read(args.quota_file) if args.quota_file is not None else {}
    except ValueError as exc:
        raise UsageError(f"quotas: {exc}") from None
    return Quotas(default, overrides)


def _read(path: Path) -> dict[str, Limits]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of tenants")
    out = {}
    for tenant, spec in data.items():
        if not isinstance(spec, dict) or set(spec) - {"rpm", "tpm", "max_concurrent"}:
            raise ValueError(f"{path}: tenant {tenant!r} takes rpm, tpm and max_concurrent")
        out[str(tenant)] = Limits(spec.get("rpm"), spec.get("tpm"), spec.get("max_concurrent"))
    return out
