"""Who a run acts for, and the decisions its calls take: the runner's decision points.

A run belongs to the principal that started it (its tenant and roles are kept beside the run,
`run_owners`); every tool call and model call of its flow is decided for that principal before
anything happens, and the decision goes into the run's evidence with the call. A run started
without a principal (`aruntime run`, or a server without auth) acts as the anonymous principal of
the default tenant.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from aruntime.durable.journal import SqlJournal
from aruntime.policy.cedar_authorizer import CedarAuthorizer
from aruntime.policy.decision import Action, Authorizer, Decision, Resource
from aruntime.policy.identity import ANONYMOUS, Principal

OWNERS_KEPT = 4096  # runs whose owner a runner keeps in memory


def principal_json(principal: Principal) -> str:
    return json.dumps({"id": principal.id, "roles": sorted(principal.roles),
                       "via": principal.via, "key_id": principal.key_id}, sort_keys=True)


def principal_of(tenant: str, text: str) -> Principal:
    data = json.loads(text)
    return Principal(data["id"], tenant, frozenset(data.get("roles", ())),
                     data.get("via", "none"), data.get("key_id"))


class RunPolicy:
    """The authorizer and the owners of runs (read once per run, then kept)."""

    def __init__(self, journal: SqlJournal, authorizer: Authorizer | None = None) -> None:
        self.journal = journal
        self.authorizer = authorizer or CedarAuthorizer()
        self._owners: OrderedDict[str, Principal] = OrderedDict()

    def owner_row(self, principal: Principal | None) -> tuple[str, str]:
        who = principal or ANONYMOUS
        return who.tenant, principal_json(who)

    def owner(self, run_id: str) -> Principal:
        """Whom the run acts for (the anonymous default-tenant principal if nobody started it)."""
        found = self._owners.get(run_id)
        if found is None:
            row = self.journal.run_owner(run_id)
            found = principal_of(*row) if row is not None else ANONYMOUS
            self.remember(run_id, found)
        return found

    def remember(self, run_id: str, principal: Principal) -> None:
        self._owners[run_id] = principal
        self._owners.move_to_end(run_id)
        if len(self._owners) > OWNERS_KEPT:
            self._owners.popitem(last=False)

    def run_resource(self, run_id: str, flow: str) -> Resource:
        return Resource("Run", run_id, {"tenant": self.owner(run_id).tenant, "flow": flow})

    def decide(self, run_id: str, action: Action, resource: Resource,
               context: Mapping[str, Any] | None = None) -> Decision:
        """A decision for the run's owner, acting in the run's tenant."""
        who = self.owner(run_id)
        return self.authorizer.decide(who, action, resource,
                                      {"tenant": who.tenant, **(context or {})})

    def tool_call(self, run_id: str, name: str, side_effect: bool,
                  args: Mapping[str, Any]) -> Decision:
        return self.decide(run_id, Action.CALL_TOOL,
                           Resource("Tool", name, {"name": name, "side_effect": side_effect}),
                           {"input": dict(args)})

    def model_call(self, run_id: str, model: str) -> Decision:
        return self.decide(run_id, Action.INVOKE_MODEL, Resource("Model", model, {"name": model}),
                           {"model": model})
