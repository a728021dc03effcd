"""`aruntime serve`'s identity flags: `--auth keys|jwt|none` and the JWT issuer's settings.
Without authentication the server may listen on a loopback address only."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from aruntime.errors import UsageError
from aruntime.policy.identity import Authenticator, NoAuth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("who may call (the tenant comes from the credential)")
    group.add_argument("--auth", choices=("none", "keys", "jwt"), default="none",
                       help="none (loopback only; the default), keys (`aruntime keys create`), "
                            "or jwt (OIDC access tokens)")
    group.add_argument("--jwks", type=Path, default=None, metavar="FILE",
                       help="the issuer's JSON Web Key Set (with --auth jwt)")
    group.add_argument("--issuer", default=None, help="the tokens' `iss` (with --auth jwt)")
    group.add_argument("--audience", default=None, help="the tokens' `aud` (with --auth jwt)")
    group.add_argument("--tenant-claim", default="tenant", metavar="CLAIM",
                       help="the token claim naming the tenant (default: tenant)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check(args: argparse.Namespace) -> None:
    """Before anything loads: refuse what cannot be served safely, in one line."""
    if args.auth == "none" and not is_loopback(args.host):
        raise UsageError(f"--host {args.host} without authentication would let anyone on the "
                         "network claim any tenant; pass --auth keys or --auth jwt, or bind "
                         "127.0.0.1")
    if args.auth == "jwt" and not (args.jwks and args.issuer and args.audience):
        raise UsageError("--auth jwt needs --jwks FILE, --issuer and --audience")


def authenticator_from(args: argparse.Namespace, data_dir: Path) -> Authenticator:
    if args.auth == "keys":
        from aruntime.policy.api_keys import KEYS_FILE, KeyAuth, KeyStore

        return KeyAuth(KeyStore(data_dir / KEYS_FILE))
    if args.auth == "jwt":
        from aruntime.policy.jwt_auth import JwtAuth

        try:
            return JwtAuth.from_file(args.jwks, args.issuer, args.audience, args.tenant_claim)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return NoAuth()
