"""The releases a request names itself — a prompt (`aruntime.prompt`), a retrieval config
(`aruntime.retrieval`) — as requests use them: `NAME` (the active rollout's assignment, else
the stable version) or `NAME@ALIAS`, resolved to what serves, verified the first time this
process serves that version, then kept in memory (versions.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aruntime.adapt.artifact import Kind, UnknownRelease
from aruntime.adapt.controller import Assignment, RolloutController
from aruntime.adapt.registry import Registry, Release
from aruntime.adapt.versions import Versions

T = TypeVar("T")


@dataclass(frozen=True)
class Use(Generic[T]):
    assignment: Assignment
    value: T  # what the user's answer is made with (a prompt's text, a retriever)
    shadow: T | None = None  # the candidate's, for a mirrored request

    def at(self, shadow: bool) -> T:
        """What serves the user's request, or (`shadow`) its mirrored copy."""
        return self.shadow if shadow and self.shadow is not None else self.value


class RequestReleases(Generic[T]):
    def __init__(self, controller: RolloutController, kind: Kind,
                 make: Callable[[Registry, Release], T]) -> None:
        self.controller, self.kind, self._make = controller, kind, make
        # by name: a name's kind never changes, so the journal is asked once per name
        self._names: dict[str, Versions[T]] = {}
        self._lock = threading.Lock()

    def resolve(self, ref: str, tenant: str, session: str) -> Use[T]:
        name, _, alias = ref.partition("@")
        versions = self._versions(name)
        if alias:
            version = self.controller.registry.aliases(name).get(alias)
            if version is None:
                raise UnknownRelease(f"{name} has no alias {alias!r}")
            assignment = Assignment(name, version)
        else:
            assignment = self.controller.assign(name, tenant, session)
        shadow = versions.at(assignment.shadow) if assignment.shadow else None
        return Use(assignment, versions.at(assignment.version), shadow)

    def _versions(self, name: str) -> Versions[T]:
        with self._lock:
            known = self._names.get(name)
        if known is not None:
            return known
        made = Versions(self.controller.registry, name, self.kind, self._make)
        with self._lock:
            return self._names.setdefault(name, made)

    def at(self, name: str, version: str) -> T:
        return self._versions(name).at(version)
