"""Cedar decisions with `cedarpy`: the policy set parsed once, a decision cache in front.

The cache is keyed by (policy version, principal, action, resource, context digest). That is
sound because a Cedar decision is a pure function of those (Cedar has no clock and no I/O: the
time a policy may test is a `context` field, at the minute). A new policy set empties it.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import cedarpy

from aruntime.contracts.base import canonical_json, sha256_digest
from aruntime.policy.decision import Action, Authorizer, Decision, Mode, Resource
from aruntime.policy.identity import Principal

NAMESPACE = "ARuntime"
CACHE_SIZE = 65536


class PolicyError(ValueError):
    """A policy set that does not parse or does not validate against its schema."""


def builtin_text(name: str) -> str:
    """A file shipped beside this module: `builtin.cedar`, `schema.cedarschema`."""
    return resources.files("aruntime.policy").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class CedarPolicy:
    """A parsed policy set and the digest it is known by (over its text and its schema)."""

    text: str
    schema_text: str
    version: str
    policies: cedarpy.PolicySet
    source: str = "builtin"

    @classmethod
    def parse(cls, text: str, schema_text: str | None = None, *, validate: bool = True,
              source: str = "inline") -> CedarPolicy:
        schema_text = builtin_text("schema.cedarschema") if schema_text is None else schema_text
        try:
            policies = cedarpy.PolicySet.from_str(text)
            schema = cedarpy.Schema.from_str(schema_text)
        except ValueError as exc:
            raise PolicyError(f"{source}: {exc}") from None
        if validate:
            result = cedarpy.validate_policies(text, schema)
            if not result.validation_passed:
                found = "; ".join(str(e) for e in result.errors[:3])
                raise PolicyError(f"{source}: does not validate against its schema: {found}")
        version = sha256_digest({"policies": text, "schema": schema_text})
        return cls(text, schema_text, version, policies, source)

    @classmethod
    def builtin(cls) -> CedarPolicy:
        return cls.parse(builtin_text("builtin.cedar"), source="builtin")


def uid(type_: str, id_: str) -> dict[str, str]:
    return {"type": f"{NAMESPACE}::{type_}", "id": id_}


def cedar_value(value: Any) -> Any:
    """JSON as Cedar takes it: no nulls (their keys go), whole floats as Longs, other floats as
    decimals (4 places), or as their text when out of the decimal range."""
    if isinstance(value, Mapping):
        return {str(k): cedar_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple | set | frozenset):
        return [cedar_value(v) for v in value if v is not None]
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
            return int(value)
        if math.isfinite(value) and abs(value) < 922337203685477:
            return {"__extn": {"fn": "decimal", "arg": f"{value:.4f}"}}
        return repr(value)
    return value


def request_of(principal: Principal, action: Action, resource: Resource,
               context: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Cedar request and its entities (the principal and the resource)."""
    entities = [
        {"uid": uid("Principal", principal.id), "parents": [],
         "attrs": {"tenant": principal.tenant, "roles": sorted(principal.roles)}},
        {"uid": uid(resource.type, resource.id), "parents": [],
         "attrs": cedar_value(dict(resource.attrs))},
    ]
    request = {"principal": uid("Principal", principal.id),
               "action": uid("Action", str(action)),
               "resource": uid(resource.type, resource.id),
               "context": cedar_value(dict(context))}
    return request, entities


def minute_now() -> int:
    """`context.time`: unix seconds at the minute, so cached decisions live a minute at most."""
    return int(time.time()) // 60 * 60


class CedarAuthorizer(Authorizer):
    """Decides with the policy set in force; `replace` swaps it (a reload) and drops the cache."""

    def __init__(self, policy: CedarPolicy | None = None, mode: Mode = Mode.ENFORCE,
                 cache_size: int = CACHE_SIZE) -> None:
        self.mode = mode
        self._policy = policy or CedarPolicy.builtin()
        self._cache: OrderedDict[bytes, Decision] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self._policy.version

    @property
    def policy(self) -> CedarPolicy:
        return self._policy

    def replace(self, policy: CedarPolicy) -> None:
        with self._lock:
            self._policy = policy
            self._cache.clear()

    def decide(self, principal: Principal, action: Action, resource: Resource,
               context: Mapping[str, Any] | None = None) -> Decision:
        start = time.perf_counter()
        ctx = {"tenant": principal.tenant, "time": minute_now(), **(context or {})}
        policy = self._policy
        key = self._key(policy.version, principal, action, resource, ctx)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is not None:
            return Decision(hit.action, hit.resource, hit.allowed, hit.policy_version,
                            hit.determining, (time.perf_counter() - start) * 1e6, self.mode,
                            hit.errors, cached=True)
        decision = self._evaluate(policy, principal, action, resource, ctx, start)
        with self._lock:
            self._cache[key] = decision
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return decision

    def _evaluate(self, policy: CedarPolicy, principal: Principal, action: Action,
                  resource: Resource, ctx: Mapping[str, Any], start: float) -> Decision:
        request, entities = request_of(principal, action, resource, ctx)
        result = cedarpy.is_authorized(request, policy.policies, entities)
        names = result.diagnostics.id_annotations_by_reason or {}
        determining = tuple(sorted(names.get(r, r) for r in result.diagnostics.reasons))
        errors = tuple(str(e) for e in result.diagnostics.errors)
        return Decision(str(action), f'{NAMESPACE}::{resource.type}::"{resource.id}"',
                        bool(result.allowed), policy.version, determining,
                        (time.perf_counter() - start) * 1e6, self.mode, errors)

    @staticmethod
    def _key(version: str, principal: Principal, action: Action, resource: Resource,
             ctx: Mapping[str, Any]) -> bytes:
        return hashlib.sha256(canonical_json([
            version, principal.id, principal.tenant, sorted(principal.roles), str(action),
            resource.type, resource.id, dict(resource.attrs), dict(ctx)])).digest()
