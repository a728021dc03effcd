"""Cedar decisions with `cedarpy`: the policy set parsed once, a decision cache in front.

The cache is keyed by (policy version, principal, action, resource, context). That is sound
because a Cedar decision is a pure function of those (Cedar has no clock and no I/O: the time a
policy may test is a `context` field, at the minute). A new policy set empties it.

The key and the pre-parsed entities are decision_cache.py's; each decision is evaluated against
only the policies its action and resource can match (policy_index.py): both change nothing Cedar
would answer, only what it costs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import cedarpy

from aruntime.contracts.base import sha256_digest
from aruntime.policy.decision import Action, Authorizer, Decision, Mode, Resource
from aruntime.policy.decision_cache import LRU, EntityStore, Key, decision_key
from aruntime.policy.identity import Principal
from aruntime.policy.policy_index import PolicyIndex

NAMESPACE = "ARuntime"
CACHE_SIZE = 65536
ENTITY_CACHE_SIZE = 4096  # principals, and (principal, resource) pairs


class PolicyError(ValueError):
    """A policy set that does not parse or does not validate against its schema."""


def builtin_text(name: str) -> str:
    """A file shipped beside this module: `builtin.cedar`, `schema.cedarschema`."""
    return resources.files("aruntime.policy").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class CedarPolicy:
    """A parsed policy set and the digest it is known by (over its text and its schema, or a
    bundle's files), with its schema and its slices by scope (policy_index.py) pre-parsed."""

    text: str
    schema_text: str
    version: str
    policies: cedarpy.PolicySet
    source: str = "builtin"
    schema: cedarpy.Schema | None = field(default=None, compare=False)
    index: PolicyIndex | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.index is None:
            object.__setattr__(self, "index", PolicyIndex(self.text, self.policies))

    def policies_for(self, request: Mapping[str, Any]) -> cedarpy.PolicySet:
        """The policies a Cedar request can match: the slice of its action and resource."""
        assert self.index is not None
        return self.index.for_request(request["action"], request["resource"])

    @classmethod
    def parse(cls, text: str, schema_text: str | None = None, *, validate: bool = True,
              source: str = "inline", version: str | None = None) -> CedarPolicy:
        """Parse (and validate) a policy set; its version is `version` when given (a bundle's
        digest over its files), else a digest over the text and the schema."""
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
        version = version or sha256_digest({"policies": text, "schema": schema_text})
        return cls(text, schema_text, version, policies, source, schema)

    @classmethod
    def builtin(cls) -> CedarPolicy:
        return cls.parse(builtin_text("builtin.cedar"), source="builtin")

    @property
    def size(self) -> int:
        """How many policies the set holds (not `__len__`: an empty set must stay truthy)."""
        return len(self.policies)


def uid(type_: str, id_: str) -> dict[str, str]:
    return {"type": f"{NAMESPACE}::{type_}", "id": id_}


def cedar_value(value: Any) -> Any:
    """JSON as Cedar takes it: no nulls (their keys go), whole floats as Longs, other floats as
    decimals (4 places), or as their text when out of the decimal range."""
    if type(value) is dict and all(type(k) is str and type(v) in _AS_IS
                                   for k, v in value.items()):
        return value  # the usual context or attributes: nothing to change (and not copied)
    if isinstance(value, Mapping):
        return {_key_text(k): cedar_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple | set | frozenset):
        return [cedar_value(v) for v in value if v is not None]
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
            return int(value)
        if math.isfinite(value) and abs(value) < 922337203685477:
            return {"__extn": {"fn": "decimal", "arg": f"{value:.4f}"}}
        return repr(value)
    return value


_AS_IS = frozenset({str, int, bool})


def _key_text(key: Any) -> str:
    """A mapping's key as JSON spells it (`true`, not `True`), so that the cache key's JSON
    text and the Cedar request always agree."""
    return key if isinstance(key, str) else json.dumps(key)


def principal_entity(principal: Principal) -> dict[str, Any]:
    return {"uid": uid("Principal", principal.id), "parents": [],
            "attrs": {"tenant": principal.tenant, "roles": sorted(principal.roles)}}


def resource_entity(resource: Resource) -> dict[str, Any]:
    return {"uid": uid(resource.type, resource.id), "parents": [],
            "attrs": cedar_value(dict(resource.attrs))}


def entities_of(principal: Principal, resource: Resource) -> list[dict[str, Any]]:
    """The request's entities as Cedar's JSON: the principal and the resource."""
    return [principal_entity(principal), resource_entity(resource)]


def cedar_request(principal: Principal, action: Action, resource: Resource,
                  context: Mapping[str, Any]) -> dict[str, Any]:
    return {"principal": uid("Principal", principal.id), "action": uid("Action", str(action)),
            "resource": uid(resource.type, resource.id), "context": cedar_value(dict(context))}


def request_of(principal: Principal, action: Action, resource: Resource,
               context: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Cedar request and its entities (the principal and the resource)."""
    return cedar_request(principal, action, resource, context), entities_of(principal, resource)


def context_of(principal: Principal, context: Mapping[str, Any] | None) -> dict[str, Any]:
    """The context a decision is taken in: the principal's tenant and the minute, unless the
    caller says otherwise, and the caller's facts."""
    return {"tenant": principal.tenant, "time": minute_now(), **(context or {})}


def minute_now() -> int:
    """`context.time`: unix seconds at the minute, so cached decisions live a minute at most."""
    return int(time.time()) // 60 * 60


class CedarAuthorizer(Authorizer):
    """Decides with the policy set in force; `replace` swaps it (a reload) and drops the cache."""

    def __init__(self, policy: CedarPolicy | None = None, mode: Mode = Mode.ENFORCE,
                 cache_size: int = CACHE_SIZE) -> None:
        self.mode = mode
        self._policy = policy if policy is not None else CedarPolicy.builtin()
        self._cache: LRU[Decision] = LRU(cache_size)
        self._entities = EntityStore(ENTITY_CACHE_SIZE)

    @property
    def version(self) -> str:
        return self._policy.version

    @property
    def policy(self) -> CedarPolicy:
        return self._policy

    def replace(self, policy: CedarPolicy) -> None:
        """Put `policy` in force: decisions from now on are its, none cached before it."""
        self._policy = policy  # one reference swap: a decision in flight finishes on the old
        self._cache.clear()  # (its entry, keyed by the old version, is never hit again)

    def decide(self, principal: Principal, action: Action, resource: Resource,
               context: Mapping[str, Any] | None = None) -> Decision:
        start = time.perf_counter()
        ctx = context_of(principal, context)
        policy = self._policy
        key = decision_key(policy.version, principal, action, resource, ctx)
        if key is None:  # a value with no JSON text: decided, not cached
            return self._evaluate(policy, principal, action, resource, ctx, None, start)
        hit = self._cache.get(key)
        if hit is not None:
            return Decision(hit.action, hit.resource, hit.allowed, hit.policy_version,
                            hit.determining, (time.perf_counter() - start) * 1e6, self.mode,
                            hit.errors, cached=True)
        decision = self._evaluate(policy, principal, action, resource, ctx, key, start)
        self._cache.put(key, decision)
        return decision

    def _evaluate(self, policy: CedarPolicy, principal: Principal, action: Action,
                  resource: Resource, ctx: Mapping[str, Any], key: Key | None,
                  start: float) -> Decision:
        request = cedar_request(principal, action, resource, ctx)
        entities = (json.dumps(entities_of(principal, resource)) if key is None else
                    self._entities.get(key, lambda: principal_entity(principal),
                                       lambda: resource_entity(resource)))
        result = cedarpy.is_authorized(request, policy.policies_for(request), entities)
        names = result.diagnostics.id_annotations_by_reason or {}
        determining = tuple(sorted(names.get(r, r) for r in result.diagnostics.reasons))
        errors = tuple(str(e) for e in result.diagnostics.errors)
        return Decision(str(action), f'{NAMESPACE}::{resource.type}::"{resource.id}"',
                        bool(result.allowed), policy.version, determining,
                        (time.perf_counter() - start) * 1e6, self.mode, errors)
