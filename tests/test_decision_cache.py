"""The fast paths change nothing Cedar answers: the cached decision is the one evaluated, a
cache key never merges two requests Cedar tells apart, and a decision on the slice of the policy
its action and resource can match (policy_index.py) has the decision, determining policies and
errors of `cedarpy.is_authorized` on the whole policy text."""

from __future__ import annotations

from typing import Any

import cedarpy
import pytest

from aruntime.bench.policy_workload import policy_text, requests
from aruntime.policy.cedar_authorizer import (
    CedarAuthorizer,
    CedarPolicy,
    context_of,
    request_of,
)
from aruntime.policy.decision import Action, Resource
from aruntime.policy.identity import Principal

ALICE = Principal("alice", "a", frozenset({"user"}))
FLAG = """
@id("flag-true") permit (principal, action, resource) when { context has flag && context.flag == true };
@id("big-amount") permit (principal, action, resource)
when { context has amount && context.amount == 1 && context has flag };
"""  # noqa: E501


def test_sixty_rule_slices_answer_as_cedar_does_on_the_whole_text() -> None:
    text = policy_text()
    authorizer = CedarAuthorizer(CedarPolicy.parse(text), cache_size=0)
    answers = {True: 0, False: 0}
    for r in requests(400, seed=7):
        ours = authorizer.decide(r.principal, r.action, r.resource, r.context)
        request, entities = request_of(r.principal, r.action, r.resource,
                                       context_of(r.principal, r.context))
        theirs = cedarpy.is_authorized(request, text, entities)
        names = theirs.diagnostics.id_annotations_by_reason
        assert ours.allowed == theirs.allowed, r
        assert ours.determining == tuple(sorted(names.get(p, p)
                                                for p in theirs.diagnostics.reasons)), r
        assert ours.errors == tuple(str(e) for e in theirs.diagnostics.errors), r
        answers[ours.allowed] += 1
    assert min(answers.values()) > 50  # both answers are common: the check is not vacuous


def test_a_hit_is_the_decision_evaluated() -> None:
    a = CedarAuthorizer(CedarPolicy.parse(FLAG, validate=False))
    model = Resource("Model", "m", {"name": "m"})
    first = a.decide(ALICE, Action.INVOKE_MODEL, model, {"flag": True})
    again = a.decide(ALICE, Action.INVOKE_MODEL, model, {"flag": True})
    assert (first.cached, again.cached) == (False, True)
    assert (again.allowed, again.determining) == (True, ("flag-true",))


@pytest.mark.parametrize(("one", "other"), [
    ({"flag": True}, {"flag": 1}),  # equal in Python, not in Cedar
    ({"flag": False, "amount": 1}, {"flag": False, "amount": True}),
    ({"flag": 1.0}, {"flag": True}),
])
def test_keys_never_merge_what_cedar_tells_apart(one: dict[str, Any],
                                                 other: dict[str, Any]) -> None:
    a = CedarAuthorizer(CedarPolicy.parse(FLAG, validate=False))
    model = Resource("Model", "m", {"name": "m"})
    fresh = CedarAuthorizer(CedarPolicy.parse(FLAG, validate=False), cache_size=0)
    a.decide(ALICE, Action.INVOKE_MODEL, model, one)
    second = a.decide(ALICE, Action.INVOKE_MODEL, model, other)
    assert not second.cached
    assert second.allowed == fresh.decide(ALICE, Action.INVOKE_MODEL, model, other).allowed


def test_a_context_json_cannot_spell_is_decided_every_time() -> None:
    a = CedarAuthorizer(CedarPolicy.parse(FLAG, validate=False))
    model = Resource("Model", "m", {"name": "m"})
    ctx = {"flag": True, "tags": {"x", "y"}}  # a set: no JSON text, so no key
    decisions = [a.decide(ALICE, Action.INVOKE_MODEL, model, ctx) for _ in range(2)]
    assert [(d.allowed, d.cached) for d in decisions] == [(True, False), (True, False)]


def test_a_reload_drops_the_cache() -> None:
    a = CedarAuthorizer(CedarPolicy.parse(FLAG, validate=False))
    model = Resource("Model", "m", {"name": "m"})
    assert a.decide(ALICE, Action.INVOKE_MODEL, model, {"flag": True}).allowed
    a.replace(CedarPolicy.parse(FLAG + '@id("no") forbid (principal, action, resource);',
                                validate=False))
    after = a.decide(ALICE, Action.INVOKE_MODEL, model, {"flag": True})
    assert (after.allowed, after.cached, after.determining) == (False, False, ("no",))
