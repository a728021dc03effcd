"""The Cedar bundle a server serves as a release (`serve --release policy=NAME`): its versions
in the registry, each verified — provenance, content, and the bundle's own signature under
`--policy-key` — before it decides anything, then kept (adapt/versions.py).

A request is decided by the version its rollout assigns it (`at(version)`, serve/release_uses.py
chooses); anything decided outside a request (a run's calls, MCP tools, the controller's own
unattended promotions) by the stable version. A promotion moves `stable`, so the next decision
is the new version's, with no reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.adapt.artifact import Kind, ReleaseError
from aruntime.adapt.registry import Registry, Release
from aruntime.adapt.versions import Versions
from aruntime.policy.bundle import PolicyBundle, load_bundle
from aruntime.policy.cedar_authorizer import CedarAuthorizer, PolicyError
from aruntime.policy.decision import Action, Authorizer, Decision, Mode, Resource
from aruntime.policy.identity import Principal


class ReleasedPolicy(Authorizer):
    def __init__(self, name: str, mode: Mode = Mode.ENFORCE,
                 trusted: Ed25519PublicKey | None = None) -> None:
        self.name, self.mode, self.trusted = name, mode, trusted
        self._versions: Versions[tuple[PolicyBundle, CedarAuthorizer]] | None = None

    def attach(self, registry: Registry) -> None:
        """Serve from `registry` (the server's, once its journal is open); ReleaseError when
        the stable version is missing or refused — the server must not start without it."""
        self._versions = Versions(registry, self.name, Kind.POLICY, self._load)
        self.at(self.stable())

    def _load(self, registry: Registry, release: Release) -> tuple[PolicyBundle, CedarAuthorizer]:
        where = f"{release.name}@{release.version[:19]}"
        registry.verify(release)
        try:
            bundle = load_bundle(Path(release.stored), self.trusted)
        except (PolicyError, OSError) as exc:
            raise ReleaseError(f"{where}: {exc}") from None
        registry.verify(release)  # what was parsed is still what was checked
        return bundle, CedarAuthorizer(bundle.policy, self.mode)

    def _served(self) -> Versions[tuple[PolicyBundle, CedarAuthorizer]]:
        if self._versions is None:
            raise RuntimeError(f"policy release {self.name} is not attached to a registry")
        return self._versions

    def stable(self) -> str:
        return self._served().stable()

    def at(self, version: str) -> CedarAuthorizer:
        """The authorizer of one version (ReleaseError when it is refused)."""
        return self._served().at(version)[1]

    def bundle(self, version: str) -> PolicyBundle:
        return self._served().at(version)[0]

    @property
    def version(self) -> str:
        return self.at(self.stable()).version

    @property
    def verified(self) -> bool:
        """Whether the stable bundle's signature verified under the trusted key."""
        return self.trusted is not None and self.bundle(self.stable()).signed

    @property
    def signature(self) -> str:
        """What `aruntime:policy_info` says of the stable bundle's signature."""
        return f"release {self.name}: {self.bundle(self.stable()).signature}"

    def decide(self, principal: Principal, action: Action, resource: Resource,
               context: Mapping[str, Any] | None = None) -> Decision:
        return self.at(self.stable()).decide(principal, action, resource, context)
