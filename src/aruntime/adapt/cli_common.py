"""What the release and rollout commands share: the registry and controller on the local
journal, or a server's HTTP API (`--server URL`, the credential in $ARUNTIME_API_KEY)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aruntime import paths
from aruntime.adapt.artifact import ReleaseError
from aruntime.confidential.http_errors import message_of
from aruntime.errors import UsageError

KEY_ENV = "ARUNTIME_API_KEY"
T = TypeVar("T")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL", default=None,
                        help="act through this server's API (default: the local journal)")
    parser.add_argument("--journal", metavar="URL", default=None,
                        help="a SQLite file or postgresql:// URL (default: $ARUNTIME_JOURNAL, "
                             f"else {paths.data_dir() / 'runs.db'})")


def controller(args: argparse.Namespace) -> Any:
    """The rollout controller (and its registry) on the local journal."""
    from aruntime.adapt.controller import RolloutController
    from aruntime.adapt.registry import Registry
    from aruntime.adapt.rollout import RolloutStore
    from aruntime.durable.journal import JournalError, default_journal, open_journal
    from aruntime.evidence.signing import DeploymentKey, SigningError, default_key_path

    try:
        journal = open_journal(args.journal or default_journal())
        signer = DeploymentKey.load_or_create(default_key_path())
    except (JournalError, SigningError, OSError) as exc:
        raise UsageError(str(exc)) from None
    data = Path(str(journal.path)).parent if hasattr(journal, "path") else paths.data_dir()
    return RolloutController(Registry(journal, data / "releases", signer),
                             RolloutStore(journal, signer))


def http(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {os.environ[KEY_ENV]}"} if KEY_ENV in os.environ \
        else {}
    try:
        r = httpx.request(method, f"{args.server.rstrip('/')}{path}", headers=headers,
                          timeout=60, **kwargs)
    except httpx.HTTPError as exc:
        raise UsageError(f"{args.server}: {exc}") from None
    if r.status_code != 200:
        raise UsageError(f"{args.server}: {r.status_code}: {message_of(r)}")
    return r.json()


def local(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ReleaseError as exc:
        raise UsageError(str(exc)) from None


def show(value: Any) -> int:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def who() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
