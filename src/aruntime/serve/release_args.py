"""`aruntime serve --release KIND=NAME`: the server's own releases, served at NAME's stable
version and moved by NAME's rollouts — its Cedar bundle (`policy=NAME`, in place of `--policy
PATH`; `--policy-mode` and `--policy-key` apply to every version), its router policy
(`route=NAME`) and its model (`model=NAME`, in place of `--model`: a rollout's candidate is
loaded beside it, serve/released_model.py). A request's prompt and retrieval config are its own
(`aruntime.prompt`, `aruntime.retrieval`).

Each is checked before the engine starts — the name holds that kind, has a stable version, and
it verifies — so a missing or tampered one is one line, not a server that serves without it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from aruntime.adapt.artifact import Kind, ReleaseError
from aruntime.errors import UsageError, first_line
from aruntime.policy import policy_args
from aruntime.policy.decision import Authorizer, Mode
from aruntime.policy.reloader import PolicyReloader
from aruntime.serve.released_policy import ReleasedPolicy

if TYPE_CHECKING:
    from aruntime.adapt.registry import Registry, Release
    from aruntime.engine.config import EngineConfig
    from aruntime.serve.released_model import ModelEngines

T = TypeVar("T")
SERVED_KINDS = (Kind.MODEL, Kind.POLICY, Kind.ROUTE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release", action="append", default=[], metavar="KIND=NAME",
                        help="serve a release of the registry at its stable version, moved by "
                             "its rollouts: model=NAME (a checkpoint, in place of --model), "
                             "policy=NAME (a Cedar bundle, in place of --policy) or route=NAME "
                             "(the router's policy and weights); repeatable")


def served(args: argparse.Namespace) -> dict[Kind, str]:
    out: dict[Kind, str] = {}
    for item in args.release:
        kind, sep, name = str(item).partition("=")
        if not sep or not name or kind not in {k.value for k in SERVED_KINDS}:
            raise UsageError(f"--release {item}: give KIND=NAME, KIND one of "
                             f"{', '.join(k.value for k in SERVED_KINDS)}")
        if Kind(kind) in out:
            raise UsageError(f"--release {item}: {kind} is already {out[Kind(kind)]}")
        out[Kind(kind)] = name
    if Kind.MODEL in out and args.model is not None:
        raise UsageError("--release model=NAME serves the model from the registry: drop "
                         "--model")
    if Kind.POLICY in out and args.policy is not None:
        raise UsageError("--release policy=NAME serves the policy from the registry: drop "
                         "--policy PATH (or serve that bundle alone)")
    return out


def authorizer_from(args: argparse.Namespace, releases: dict[Kind, str], data_dir: Path
                    ) -> tuple[Authorizer, PolicyReloader | None]:
    """`--release policy=NAME`'s authorizer, its stable version checked now; else the
    --policy flags' (policy/policy_args.py)."""
    name = releases.get(Kind.POLICY)
    if name is None:
        return policy_args.authorizer_from(args)
    released = ReleasedPolicy(name, Mode(args.policy_mode), policy_args.trusted_key(args))
    check(data_dir, lambda registry: released.attach(registry))
    return released, None


def model_path(args: argparse.Namespace, releases: dict[Kind, str], data_dir: Path
               ) -> Path | None:
    """`--release model=NAME`'s checkpoint: its stable version's, verified now."""
    from aruntime.adapt.versions import Versions

    name = releases.get(Kind.MODEL)
    if name is None:
        return None

    def stable(registry: Registry) -> Path:
        versions = Versions(registry, name, Kind.MODEL, _verified_path)
        return versions.at(versions.stable())

    return check(data_dir, stable)


def _verified_path(registry: Registry, release: Release) -> Path:
    registry.verify(release)  # a checkpoint changed after `release add` never serves
    return Path(release.stored)


def model_engines(releases: dict[Kind, str], config: EngineConfig) -> ModelEngines | None:
    """`--release model=NAME`'s engines: a rollout's candidate gets one worker of its own, with
    the server's engine settings."""
    from aruntime.cluster.factory import open_pool
    from aruntime.serve.released_model import ModelEngines

    name = releases.get(Kind.MODEL)
    if name is None:
        return None
    return ModelEngines(name, lambda path: open_pool(dataclasses.replace(config,
                                                                         model=str(path))))


def check_route(releases: dict[Kind, str], data_dir: Path) -> str | None:
    """`--release route=NAME`'s name, its stable version checked now."""
    from aruntime.serve.adaptation import released_route

    name = releases.get(Kind.ROUTE)
    if name is not None:
        check(data_dir, lambda registry: released_route(registry, name))
    return name


def check(data_dir: Path, attach: Callable[[Registry], T]) -> T:
    """Attach to the registry on the server's journal, once, before the engine starts (the
    server attaches again to its own): one line for a release it cannot serve."""
    from aruntime.adapt.registry import Registry
    from aruntime.durable.journal import JournalError, default_journal, open_journal
    from aruntime.evidence.signing import DeploymentKey, SigningError, default_key_path

    try:
        journal = open_journal(default_journal(data_dir))
    except JournalError as exc:
        raise UsageError(f"--release: {first_line(exc)}") from None
    try:
        signer = DeploymentKey.load_or_create(default_key_path(data_dir))
        return attach(Registry(journal, data_dir / "releases", signer))
    except (ReleaseError, SigningError) as exc:
        raise UsageError(f"--release: {first_line(exc)}") from None
    finally:
        journal.close()
