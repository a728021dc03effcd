"""The policies a request can match, by its scope: each decision is evaluated against only the
policies whose `action` and `resource` scope admit the request, a pre-parsed `PolicySet` per
(action, resource type, resource id where a policy names it).

Sound because Cedar evaluates a policy as `scope && conditions`, short-circuiting: a policy
whose scope does not match is neither satisfied nor in error, so leaving it out changes neither
the decision, nor the determining policies, nor the errors. The slices keep the policies' own
ids (they are built from Cedar's JSON form, keyed by id), so the reasons name the same ids.

`in` in a scope is read as equality: the requests ARuntime builds (cedar_authorizer.request_of)
carry no action entities and no parents, so nothing is a descendant of anything (Cedar's own
answer on the same request is the same). A set with templates is not sliced.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import cedarpy

MAX_SLICES = 4096  # distinct (action, type, named id) keys are few; this bounds a strange caller
_ANY = None


def _entity_of(scope: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (type, id) a `==`/`in` scope names; None when it names a list (actions only)."""
    entity = scope.get("entity")
    if entity is None:
        return None
    return str(entity["type"]), str(entity["id"])


class _Scope:
    """What one policy's scope admits: actions (None: any), a resource type and id (None:
    any)."""

    __slots__ = ("actions", "rid", "rtype")

    def __init__(self, policy: Mapping[str, Any]) -> None:
        self.actions = self._actions(policy["action"])
        self.rtype, self.rid = self._resource(policy["resource"])

    @staticmethod
    def _actions(scope: Mapping[str, Any]) -> frozenset[tuple[str, str]] | None:
        if scope["op"] == "All":
            return _ANY
        named = _entity_of(scope)
        if named is not None:
            return frozenset({named})
        return frozenset((str(e["type"]), str(e["id"])) for e in scope["entities"])

    @staticmethod
    def _resource(scope: Mapping[str, Any]) -> tuple[str | None, str | None]:
        op = scope["op"]
        if op in ("==", "in"):
            named = _entity_of(scope)
            return named if named is not None else (_ANY, _ANY)
        if op == "is":
            inner = scope.get("in")
            if inner is not None and "entity" in inner:
                entity = inner["entity"]
                if entity["type"] != scope["entity_type"]:
                    return _ANY, _ANY  # matches nothing; kept everywhere, Cedar says so
                return str(entity["type"]), str(entity["id"])
            return str(scope["entity_type"]), _ANY
        return _ANY, _ANY

    def admits(self, action: tuple[str, str], rtype: str, rid: str | None) -> bool:
        if self.actions is not None and action not in self.actions:
            return False
        if self.rtype is not None and self.rtype != rtype:
            return False
        return self.rid is None or self.rid == rid


class PolicyIndex:
    """Slices of one policy set, made on first use and kept for the set's life."""

    def __init__(self, text: str, full: cedarpy.PolicySet) -> None:
        self.full = full
        self._policies: dict[str, Any] = {}
        self._scopes: dict[str, _Scope] = {}
        self._named: dict[str, frozenset[str]] = {}  # resource type -> ids a scope names
        self._slices: dict[tuple[str, str, str, str | None], cedarpy.PolicySet] = {}
        self._lock = threading.Lock()
        try:
            est = json.loads(cedarpy.policies_to_json_str(text))
            if est.get("templates") or est.get("templateLinks"):
                return
            self._policies = dict(est["staticPolicies"])
            self._scopes = {pid: _Scope(p) for pid, p in self._policies.items()}
        except (ValueError, KeyError, TypeError):  # a form we do not read: the whole set
            self._policies, self._scopes = {}, {}
            return
        named: dict[str, set[str]] = {}
        for scope in self._scopes.values():
            if scope.rtype is not None and scope.rid is not None:
                named.setdefault(scope.rtype, set()).add(scope.rid)
        self._named = {t: frozenset(ids) for t, ids in named.items()}

    @property
    def sliced(self) -> bool:
        return bool(self._scopes)

    def for_request(self, action: Mapping[str, str], resource: Mapping[str, str]
                    ) -> cedarpy.PolicySet:
        """The pre-parsed policies that can match a request on `action` and `resource` (uids
        as `request_of` writes them)."""
        if not self._scopes:
            return self.full
        rtype, rid = resource["type"], resource["id"]
        key_id = rid if rid in self._named.get(rtype, ()) else None
        key = (action["type"], action["id"], rtype, key_id)
        found = self._slices.get(key)
        if found is None:
            found = self._slice(key)
        return found

    def _slice(self, key: tuple[str, str, str, str | None]) -> cedarpy.PolicySet:
        atype, aid, rtype, rid = key
        chosen = {pid: self._policies[pid] for pid, scope in self._scopes.items()
                  if scope.admits((atype, aid), rtype, rid)}
        policies = cedarpy.PolicySet.from_json_str(json.dumps(
            {"staticPolicies": chosen, "templates": {}, "templateLinks": []}))
        with self._lock:
            if len(self._slices) >= MAX_SLICES:
                self._slices.clear()
            self._slices[key] = policies
        return policies
