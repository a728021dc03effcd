"""One released name's versions as this process serves them: each is read from the registry,
verified (provenance, then content) and made into what serves — a prompt's text, a Cedar
authorizer, a router policy — the first time it is asked for, then kept in memory, so a file
changed afterwards is never what serves. A version that fails is not kept: it is refused each
time it is asked for."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from aruntime.adapt.artifact import Kind, ReleaseError, UnknownRelease
from aruntime.adapt.registry import STABLE, Registry, Release

T = TypeVar("T")


def decoded(decode: Callable[[bytes, str], T]) -> Callable[[Registry, Release], T]:
    """What serves a one-file release: its bytes, verified, then decoded (`decode(data,
    where)`, ReleaseError when they are not what the kind holds)."""
    def make(registry: Registry, release: Release) -> T:
        return decode(registry.verified_bytes(release), f"{release.name}@{release.version[:19]}")
    return make


class Versions(Generic[T]):
    def __init__(self, registry: Registry, name: str, kind: Kind,
                 make: Callable[[Registry, Release], T]) -> None:
        have = registry.kind_of(name)
        if have is None:
            raise UnknownRelease(f"no {kind.value} release named {name!r}")
        if have is not kind:
            raise ReleaseError(f"{name} holds {have.value} releases, not {kind.value}")
        self.registry, self.name, self.kind = registry, name, kind
        # (registry, release) -> what serves; verifies what it reads (ReleaseError if not)
        self._make = make
        self._made: dict[str, T] = {}
        self._lock = threading.Lock()

    def stable(self) -> str:
        version = self.registry.aliases(self.name).get(STABLE)
        if version is None:
            raise ReleaseError(f"{self.name} has no stable version "
                               f"(`aruntime release alias {self.name} VERSION stable`)")
        return version

    def at(self, version: str) -> T:
        with self._lock:
            known = self._made.get(version)
        if known is not None:
            return known
        made = self._make(self.registry, self.registry.get(self.name, version))
        with self._lock:
            return self._made.setdefault(version, made)
