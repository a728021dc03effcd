"""`aruntime kbs serve` and `aruntime verifier serve`: the key broker and the verifier, each as
its own service."""

from __future__ import annotations

import argparse
from pathlib import Path

from aruntime.errors import UsageError


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resources", type=Path, required=True, metavar="DIR",
                        help="DIR/<repo>/<type>/<tag> files, each with its <tag>.policy.json")
    parser.add_argument("--appraisal", type=Path, required=True, metavar="FILE",
                        help="the appraisal policy evidence is appraised under (JSON)")
    parser.add_argument("--key", type=Path, default=None, metavar="FILE",
                        help="the verifier's Ed25519 key that signs results (default: new)")
    parser.add_argument("--admin-key", type=Path, default=None, metavar="FILE",
                        help="the public key (PEM) whose tokens may upload resources "
                             "(default: none may)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from aruntime.confidential.appraisal import AppraisalPolicy, PolicyFileError
    from aruntime.confidential.kbs import kbs_app
    from aruntime.confidential.verifier import Verifier
    from aruntime.evidence.signing import DeploymentKey, SigningError, load_public_key

    if not args.resources.is_dir():
        raise UsageError(f"--resources {args.resources}: not a directory")
    try:
        policy = AppraisalPolicy.load(args.appraisal)
        key = DeploymentKey.load(args.key) if args.key else DeploymentKey.generate()
        admin = load_public_key(args.admin_key) if args.admin_key else None
    except (PolicyFileError, SigningError) as exc:
        raise UsageError(str(exc)) from None
    verifier = Verifier(key, {policy.policy_id: policy})
    uvicorn.run(kbs_app(verifier, policy.policy_id, args.resources, admin_key=admin),
                host=args.host, port=args.port, log_level="info")
    return 0


def add_verifier_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--appraisal", type=Path, action="append", required=True,
                        metavar="FILE", help="an appraisal policy (repeatable)")
    parser.add_argument("--key", type=Path, default=None, metavar="FILE",
                        help="the Ed25519 key that signs results (default: new)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)


def run_verifier(args: argparse.Namespace) -> int:
    import uvicorn

    from aruntime.confidential.appraisal import AppraisalPolicy, PolicyFileError
    from aruntime.confidential.verifier import Verifier
    from aruntime.confidential.verifier_service import verifier_app
    from aruntime.evidence.signing import DeploymentKey, SigningError

    try:
        loaded = [AppraisalPolicy.load(p) for p in args.appraisal]
        key = DeploymentKey.load(args.key) if args.key else DeploymentKey.generate()
    except (PolicyFileError, SigningError) as exc:
        raise UsageError(str(exc)) from None
    verifier = Verifier(key, {p.policy_id: p for p in loaded})
    uvicorn.run(verifier_app(verifier), host=args.host, port=args.port, log_level="info")
    return 0
