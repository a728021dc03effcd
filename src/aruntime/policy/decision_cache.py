"""What makes a repeated decision cheap: its cache key, the decision cache, and the pre-parsed
entities of the principals and resources decisions are asked about.

The key is a tuple compared by equality, not a digest: (policy version, principal id, tenant,
roles, action, resource type, id, the attributes, the context). A flat dict of strings and
integers (what decision points mostly pass) enters as its items, compared by exact type; any
other as its JSON text, which tells `true` from `1` and `1.0` from `1` and of which the Cedar
request is a function (cedar_authorizer.cedar_value spells a mapping's keys as JSON does). So
two requests with one key are one Cedar request: the cache is sound. Items cost a fifth of a
JSON text, which costs half of canonical JSON and a sha256. A value JSON cannot spell (a set, a
date) has no key: that decision is taken afresh, never answered wrong.

Entities: a decision's two entities (its principal and its resource) are parsed by Cedar from
JSON on every call unless handed over pre-parsed. A request's decisions share them (the model
call and the output hook are on one model, by one principal), and one principal asks about many
resources, so the store keeps both the pair and each principal alone, to which a new
resource is added (Cedar parses only the resource then).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import cedarpy

from aruntime.policy.decision import Action, Resource
from aruntime.policy.identity import Principal

Key = tuple[Any, ...]
V = TypeVar("V")


def _mapping_as_dict(value: Any) -> Any:
    """`json.dumps`'s fallback for a key: a mapping as the dict it stands for; any other value
    JSON cannot spell makes the decision uncacheable (TypeError)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} has no JSON text")


_ENCODE = json.JSONEncoder(default=_mapping_as_dict).encode  # one encoder, not one per call
_PLAIN = frozenset({str, int})


def _part(fields: Mapping[str, Any]) -> tuple[tuple[str, Any], ...] | str:
    """Attributes or a context as a key part: the usual flat dict of strings and integers as its
    items (exact types: no bool or float equals one of them), anything else as JSON text."""
    if type(fields) is dict:
        items = tuple(fields.items())
        if all(type(k) is str and type(v) in _PLAIN for k, v in items):
            return items
    return _ENCODE(fields)


def decision_key(version: str, principal: Principal, action: Action, resource: Resource,
                 ctx: Mapping[str, Any]) -> Key | None:
    """The decision's cache key; None when a value has no JSON text or the principal's roles
    are not hashable (a set where a frozenset belongs)."""
    try:
        key = (version, principal.id, principal.tenant, principal.roles, str(action),
               resource.type, resource.id, _part(resource.attrs), _part(ctx))
        hash(key)
    except (TypeError, ValueError):
        return None
    return key


def principal_part(key: Key) -> Key:
    return key[1:4]  # (id, tenant, roles)


def entity_part(key: Key) -> Key:
    return key[1:4] + key[5:8]  # the principal's, and (type, id, attributes) of the resource


class LRU(Generic[V]):
    """A bounded map, least recently used out first; safe across threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Key, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: Key, value: V) -> None:
        with self._lock:
            self._items[key] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class EntityStore:
    """Pre-parsed `cedarpy.Entities` by (principal, resource), and by principal alone."""

    def __init__(self, size: int) -> None:
        self._pairs: LRU[cedarpy.Entities] = LRU(size)
        self._principals: LRU[cedarpy.Entities] = LRU(size)

    def get(self, key: Key, principal_json: Callable[[], dict[str, Any]],
            resource_json: Callable[[], dict[str, Any]]) -> cedarpy.Entities | str:
        """The entities of the decision `key` names; the callables give the two entities'
        Cedar JSON when they must be parsed. Entities Cedar will not parse come back as their
        JSON text, for `is_authorized` to report as it always has."""
        pair = entity_part(key)
        found = self._pairs.get(pair)
        if found is not None:
            return found
        who = principal_part(key)
        try:
            base = self._principals.get(who)
            if base is None:
                base = cedarpy.Entities.from_json_str(json.dumps([principal_json()]))
                self._principals.put(who, base)
            found = base.with_added_json_str(json.dumps([resource_json()]))
        except ValueError:
            return json.dumps([principal_json(), resource_json()])
        self._pairs.put(pair, found)
        return found
