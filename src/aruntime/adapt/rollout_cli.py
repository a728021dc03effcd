"""`aruntime rollout start|status|approve|abort|promote`: rollouts from the shell. With
`--server URL` through the server's API; without, on the local journal, where the server's
controller picks the change up on its next tick.

    aruntime rollout start support --to sha256:1a2b --steps 10,25,50,100 --pause-s 60
    aruntime rollout approve ro-… --approves sha256:…   # the digest `status` shows
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aruntime.adapt.analysis import Analysis
from aruntime.adapt.cli_common import add_common, controller, http, local, show, who
from aruntime.errors import UsageError


def add_start_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("--to", required=True, metavar="VERSION")
    parser.add_argument("--steps", default="10,25,50,100",
                        help="the candidate's percent of the traffic at each step")
    parser.add_argument("--pause-s", type=float, default=0.0, metavar="N",
                        help="at least this long at each step")
    parser.add_argument("--analysis", type=Path, default=None, metavar="FILE",
                        help="metrics and their bounds (JSON; default: error rate at most 5 "
                             "points above stable's over 20 of the candidate's requests)")
    parser.add_argument("--shadow", action="store_true",
                        help="mirror requests to the candidate and drop its answers")
    parser.add_argument("--require-approval", action="store_true",
                        help="a person approves the promotion (always, for model and policy)")
    add_common(parser)


def run_start(args: argparse.Namespace) -> int:
    try:
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        raise UsageError(f"--steps {args.steps}: comma-separated percentages") from None
    analysis = local(lambda: Analysis.load(args.analysis)) if args.analysis else None
    if args.server:
        return show(http(args, "POST", "/v1/rollouts", json={
            "name": args.name, "to": args.to, "steps": steps, "pause_s": args.pause_s,
            "analysis": analysis.to_json() if analysis else None, "shadow": args.shadow,
            "require_approval": args.require_approval}))
    c = controller(args)
    return show(local(lambda: c.start(args.name, args.to, steps, by=who(),
                                      pause_s=args.pause_s, analysis=analysis,
                                      shadow=args.shadow,
                                      require_approval=args.require_approval)).to_json())


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rollout_id", nargs="?", help="one rollout (default: all)")
    add_common(parser)


def run_status(args: argparse.Namespace) -> int:
    if args.server:
        path = f"/v1/rollouts/{args.rollout_id}" if args.rollout_id else "/v1/rollouts"
        return show(http(args, "GET", path))
    c = controller(args)
    if args.rollout_id:
        return show(local(lambda: c.status(args.rollout_id)))
    return show([r.to_json() for r in c.store.all()])


def add_approve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rollout_id")
    parser.add_argument("--approves", required=True, metavar="DIGEST",
                        help="the rollout's digest, as `status` shows it")
    add_common(parser)


def _decide(args: argparse.Namespace, verb: str, body: dict[str, str] | None,
            act: Callable[[Any], Any]) -> int:
    """A person's decision on a rollout: through the server's API, or on the local journal."""
    if args.server:
        return show(http(args, "POST", f"/v1/rollouts/{args.rollout_id}/{verb}", json=body))
    c = controller(args)
    return show(local(lambda: act(c)).to_json())


def run_approve(args: argparse.Namespace) -> int:
    return _decide(args, "approve", {"approves": args.approves},
                   lambda c: c.approve(args.rollout_id, args.approves, who()))


def add_abort_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rollout_id")
    parser.add_argument("--reason", default="aborted by a person")
    add_common(parser)


def run_abort(args: argparse.Namespace) -> int:
    return _decide(args, "abort", {"reason": args.reason},
                   lambda c: c.abort(args.rollout_id, who(), args.reason))


def add_promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rollout_id")
    add_common(parser)


def run_promote(args: argparse.Namespace) -> int:
    return _decide(args, "promote", None, lambda c: c.promote(args.rollout_id, who()))
