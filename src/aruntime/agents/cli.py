"""`aruntime run MODULE:FLOW` and `aruntime runs list|show|resume|recover|cancel|verify|approve|
reject|respond|resolve|compact|prune`.

Every command prints JSON on stdout. Exit 0 when the run completed or is waiting as designed,
1 when it failed (or, for verify, when its evidence does not hold), 2 with one line for bad
input: an unknown run, an unreadable JSON argument, an approval bound to another digest.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from aruntime import paths
from aruntime.durable.journal import default_journal
from aruntime.durable.states import RunStatus
from aruntime.engine.default_model import MODEL_HELP


def _journal_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--journal", metavar="URL", default=None,
                        help="a SQLite file or postgresql:// URL (default: $ARUNTIME_JOURNAL, "
                             f"else {paths.data_dir() / 'runs.db'})")


def _json_arg(text: str, what: str) -> Any:
    from aruntime.errors import UsageError

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: not JSON ({exc.msg} at character {exc.pos})") from None


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="MODEL", default=None,
                        help="the model the flows' calls go to, through an in-process engine "
                             f"client: {MODEL_HELP}")


def _runner(args: argparse.Namespace) -> Any:
    """The runner of `--journal`; flows import from the working directory, as `python -m`
    finds them, and call models on `--model`."""
    from aruntime.agents.models import LocalModels
    from aruntime.agents.runner import Runner, default_artifacts
    from aruntime.durable.journal import JournalError, open_journal
    from aruntime.errors import UsageError
    from aruntime.evidence.signing import DeploymentKey, SigningError, default_key_path

    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        journal = open_journal(args.journal or default_journal())
        signer = DeploymentKey.load_or_create(default_key_path())
    except (JournalError, SigningError, OSError) as exc:
        raise UsageError(str(exc)) from None
    return Runner(journal, signer=signer, artifacts=default_artifacts(journal),
                  models=LocalModels(_model_path(getattr(args, "model", None))))


def _model_path(given: str | None) -> Path | None:
    """--model resolved and checked before any flow runs (the model loads on the first call).
    Without --model, None: the default model is found on the first call, so a flow that calls
    no model runs without the wheel that holds it."""
    if given is None:
        return None
    from aruntime.engine.default_model import checked_model

    return checked_model(given)


def _print(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _finish(result: Any) -> int:
    _print(result.to_json())
    return 1 if result.status == RunStatus.FAILED else 0


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A runner call whose RunError is the user's mistake (exit 2, one line)."""
    from aruntime.agents.flow import DeterminismError
    from aruntime.agents.runner import RunError
    from aruntime.errors import UsageError

    try:
        return fn(*args, **kwargs)
    except (RunError, DeterminismError) as exc:
        raise UsageError(str(exc)) from None


# -- aruntime run

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flow", metavar="MODULE:FLOW", help="a function marked @flow")
    parser.add_argument("--input", default="null", metavar="JSON", help="the flow's input")
    parser.add_argument("--run-id", default=None, help="start idempotently under this id")
    parser.add_argument("--subject", default=None,
                        help="whose data the run holds (deleting the subject erases it)")
    _journal_argument(parser)
    _model_argument(parser)


def run(args: argparse.Namespace) -> int:
    value = _json_arg(args.input, "--input")
    runner = _runner(args)
    return _finish(_call(runner.start, args.flow, value, run_id=args.run_id,
                         subject=args.subject))


# -- aruntime runs …

def _run_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN")
    _journal_argument(parser)


def _seq(parser: argparse.ArgumentParser) -> None:
    _run_id(parser)
    _model_argument(parser)
    parser.add_argument("seq", metavar="SEQ", type=int, help="the call's sequence number")
    parser.add_argument("--by", default="cli", help="who decides (recorded in the evidence)")


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", default=None)
    parser.add_argument("--limit", type=int, default=100)
    _journal_argument(parser)


def run_list(args: argparse.Namespace) -> int:
    from aruntime.agents.runner import summary

    _print([summary(r) for r in _runner(args).journal.list_runs(args.status, args.limit)])
    return 0


def add_show_arguments(parser: argparse.ArgumentParser) -> None:
    _run_id(parser)


def run_show(args: argparse.Namespace) -> int:
    _print(_call(_runner(args).describe, args.run_id))
    return 0


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    _run_id(parser)
    _model_argument(parser)


def run_resume(args: argparse.Namespace) -> int:
    runner = _runner(args)
    return _finish(_call(runner.resume, args.run_id))


def add_recover_arguments(parser: argparse.ArgumentParser) -> None:
    _journal_argument(parser)
    _model_argument(parser)


def run_recover(args: argparse.Namespace) -> int:
    runner = _runner(args)
    results = _call(runner.recover)
    _print([r.to_json() for r in results])
    return 1 if any(r.status == RunStatus.FAILED for r in results) else 0


def add_cancel_arguments(parser: argparse.ArgumentParser) -> None:
    _run_id(parser)


def run_cancel(args: argparse.Namespace) -> int:
    return _finish(_call(_runner(args).cancel, args.run_id))


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    _run_id(parser)
    parser.add_argument("--public-key", type=Path, default=None, metavar="PEM",
                        help="the deployment's Ed25519 public key (default: this deployment's)")


def run_verify(args: argparse.Namespace) -> int:
    from aruntime.errors import UsageError
    from aruntime.evidence.signing import SigningError, load_public_key

    runner = _runner(args)
    try:
        key = load_public_key(args.public_key) if args.public_key is not None else None
    except SigningError as exc:
        raise UsageError(str(exc)) from None
    result = _call(runner.verify, args.run_id, key)
    _print(result.to_json())
    return 0 if result.ok else 1


def add_approve_arguments(parser: argparse.ArgumentParser) -> None:
    _seq(parser)
    parser.add_argument("--digest", required=True,
                        help="the digest of exactly what is approved (`runs show` lists it)")


def run_approve(args: argparse.Namespace) -> int:
    return _finish(_call(_runner(args).approve, args.run_id, args.seq, args.digest, args.by))


def add_reject_arguments(parser: argparse.ArgumentParser) -> None:
    _seq(parser)
    parser.add_argument("--reason", default="rejected")


def run_reject(args: argparse.Namespace) -> int:
    return _finish(_call(_runner(args).reject, args.run_id, args.seq, args.by, args.reason))


def add_respond_arguments(parser: argparse.ArgumentParser) -> None:
    _seq(parser)
    parser.add_argument("--answer", required=True, metavar="JSON")
    parser.add_argument("--digest", default=None,
                        help="for an approval: the digest of what is approved")


def run_respond(args: argparse.Namespace) -> int:
    answer = _json_arg(args.answer, "--answer")
    return _finish(_call(_runner(args).respond, args.run_id, args.seq, answer, args.by,
                         args.digest))


def add_resolve_arguments(parser: argparse.ArgumentParser) -> None:
    _seq(parser)
    outcome = parser.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--output", metavar="JSON", help="the call happened; its output")
    outcome.add_argument("--failed", metavar="REASON", help="the call did not happen")


def run_resolve(args: argparse.Namespace) -> int:
    runner = _runner(args)
    if args.failed is not None:
        return _finish(_call(runner.resolve, args.run_id, args.seq, args.by, failed=args.failed))
    output = _json_arg(args.output, "--output")
    return _finish(_call(runner.resolve, args.run_id, args.seq, args.by, output=output))


def add_compact_arguments(parser: argparse.ArgumentParser) -> None:
    _run_id(parser)


def run_compact(args: argparse.Namespace) -> int:
    from aruntime.durable.journal import JournalError
    from aruntime.errors import UsageError

    try:
        dropped = _runner(args).journal.compact(args.run_id)
    except JournalError as exc:
        raise UsageError(str(exc)) from None
    _print({"run_id": args.run_id, "entries_dropped": dropped})
    return 0


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--older-than-days", type=float, required=True,
                        help="delete finished runs last updated longer ago than this")
    parser.add_argument("--compact-older-than-days", type=float, default=None,
                        help="and drop the journal entries of finished runs older than this")
    _journal_argument(parser)


def run_prune(args: argparse.Namespace) -> int:
    """The retention policy: delete old finished runs, compact younger ones."""
    from aruntime.errors import UsageError
    from aruntime.timeutil import rfc3339, utc_now

    ages = [a for a in (args.older_than_days, args.compact_older_than_days) if a is not None]
    if any(a < 0 for a in ages):
        raise UsageError("ages in days must be >= 0")
    now = utc_now()

    def before(days: float | None) -> str | None:
        return None if days is None else rfc3339(now - timedelta(days=days))

    done = _runner(args).journal.apply_retention(before(args.compact_older_than_days),
                                                 before(args.older_than_days))
    _print({**done, "deleted_before": before(args.older_than_days),
            "compacted_before": before(args.compact_older_than_days)})
    return 0


# -- aruntime subjects erase

def add_erase_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subject", metavar="SUBJECT", help="whose data to erase everywhere")
    parser.add_argument("--release-holds", action="store_true",
                        help="erase even what memory holds under legal hold")
    _journal_argument(parser)


def run_erase(args: argparse.Namespace) -> int:
    """Crypto-shred a subject across memory, run payloads and artifacts; print the receipt."""
    from aruntime.errors import UsageError
    from aruntime.governance.erasure import LegalHoldError, erase_subject
    runner = _runner(args)
    try:
        receipt = erase_subject(args.subject, runner.journal, runner.keys,
                                runner.memory, runner.artifacts,
                                runner.evidence.signer, release_holds=args.release_holds)
    except LegalHoldError as exc:
        raise UsageError(str(exc)) from None
    _print(json.loads(receipt.to_json()))
    return 0
