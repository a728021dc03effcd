"""`aruntime serve`'s policy flags: `--policy PATH` (a bundle, watched and reloaded),
`--policy-mode enforce|log-only` and `--policy-key PEM` (the public key its signature must
verify with). Without `--policy` the built-in policy decides, in the mode given."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.errors import UsageError, first_line
from aruntime.policy.cedar_authorizer import CedarAuthorizer, PolicyError
from aruntime.policy.decision import Mode
from aruntime.policy.reloader import PolicyReloader


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what callers may do (Cedar)")
    group.add_argument("--policy", type=Path, default=None, metavar="PATH",
                       help="a .cedar file, or a directory of them with an optional "
                            "schema.cedarschema; reloaded when it changes (default: the "
                            "built-in policy, everything within one's own tenant)")
    group.add_argument("--policy-mode", choices=[m.value for m in Mode], default="enforce",
                       help="enforce (the default), or log-only: denials are recorded, "
                            "not enforced")
    group.add_argument("--policy-key", type=Path, default=None, metavar="PEM",
                       help="the Ed25519 public key the bundle's signature must verify with; "
                            "an unsigned or badly signed bundle is then refused")


def authorizer_from(args: argparse.Namespace) -> tuple[CedarAuthorizer, PolicyReloader | None]:
    """The authorizer and, with --policy, the watcher of its bundle; one line on a bad one."""
    mode = Mode(args.policy_mode)
    if args.policy is None:
        if args.policy_key is not None:
            raise UsageError("--policy-key checks a bundle's signature: give --policy PATH")
        return CedarAuthorizer(mode=mode), None
    trusted = trusted_key(args)
    try:
        reloader = PolicyReloader.open(args.policy, mode, trusted=trusted)
    except PolicyError as exc:
        raise UsageError(f"--policy: {first_line(exc)}") from None
    return reloader.authorizer, reloader


def trusted_key(args: argparse.Namespace) -> Ed25519PublicKey | None:
    """--policy-key's public key (one line for a bad file), or None."""
    from aruntime.evidence.signing import SigningError, load_public_key

    if args.policy_key is None:
        return None
    try:
        return load_public_key(args.policy_key)
    except SigningError as exc:
        raise UsageError(f"--policy-key: {first_line(exc)}") from None
