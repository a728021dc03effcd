"""A realistic policy of 60 rules over the `ARuntime` schema, and the requests it is asked about:
`bench policy` measures decisions with them, and tests import them (one generator, one place).

The rules are what a deployment writes: roles per model, tools with side effects only for
operators, memory within one's tenant, approvers and auditors on runs, a maintenance window, an
SLO and a confidentiality rule, guests confined to the small model, findings that withhold an
output. The requests are seeded: principals of four tenants with one to three roles, each action
on a resource of its type, contexts with the facts the decision points pass (sometimes another
tenant, sometimes an SLO, a confidentiality, findings).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from aruntime.policy.decision import Action, Resource
from aruntime.policy.identity import Principal

RULES = 60
TENANTS = ("acme", "globex", "initech", "umbrella")
ROLES = ("admin", "engineer", "analyst", "support", "auditor", "approver", "operator", "guest",
         "cleared", "billing")
MODELS = ("small", "medium", "large", "code", "vision", "embed")
TOOLS = {"search": False, "calculator": False, "weather": False, "read_file": False,
         "refund": True, "send_email": True, "write_file": True, "delete_account": True}
FLOWS = ("support", "billing", "research")
FINDINGS = ("email", "phone", "card_number", "secret")
MAINTENANCE = (1_767_225_600, 1_767_229_200)  # 2026-01-01T00:00Z to 01:00Z: no large model
NOW = 1_767_312_000  # the requests' minute (2026-01-02T00:00Z), outside the window
A = "ARuntime::Action::"


def _rule(rule_id: str, effect: str, scope: str, when: str = "", unless: str = "") -> str:
    text = f'@id("{rule_id}")\n{effect} ({scope})'
    if when:
        text += f"\nwhen {{ {when} }}"
    if unless:
        text += f"\nunless {{ {unless} }}"
    return text + ";\n"


def _scope(action: str, resource: str = "resource") -> str:
    return f'principal, action == {A}"{action}", {resource}'


OWN = "context.tenant == principal.tenant"


def _model_rules() -> list[str]:
    # per model, the two roles that may invoke it in their own tenant
    who = {"small": ("analyst", "support"), "medium": ("analyst", "engineer"),
           "large": ("engineer", "cleared"), "code": ("engineer", "operator"),
           "vision": ("analyst", "support"), "embed": ("engineer", "analyst")}
    rules = [_rule(f"invoke-{m}-{r}", "permit", _scope("invoke_model",
                                                       f'resource == ARuntime::Model::"{m}"'),
                   f'{OWN} && principal.roles.contains("{r}")')
             for m in MODELS for r in who[m]]
    start, end = MAINTENANCE
    rules += [
        _rule("admin-own-tenant", "permit", "principal, action, resource",
              f'{OWN} && principal.roles.contains("admin")'),
        _rule("large-maintenance-window", "forbid",
              _scope("invoke_model", 'resource == ARuntime::Model::"large"'),
              f"context.time >= {start} && context.time < {end}"),
        _rule("large-not-for-tight-slo", "forbid",
              _scope("invoke_model", 'resource == ARuntime::Model::"large"'),
              "context has slo && context.slo has ttft_ms && context.slo.ttft_ms < 100"),
        _rule("secret-needs-clearance", "forbid", _scope("invoke_model"),
              'context has confidentiality && context.confidentiality == "secret"',
              'principal.roles.contains("cleared")'),
        _rule("guests-small-only", "forbid", "principal, action, resource",
              'principal.roles.contains("guest")',
              f'action == {A}"invoke_model" && resource == ARuntime::Model::"small"'),
        _rule("guest-small", "permit",
              _scope("invoke_model", 'resource == ARuntime::Model::"small"'),
              f'{OWN} && principal.roles.contains("guest")'),
    ]
    rules += [_rule(f"{t}-code-for-all", "permit",
                    _scope("invoke_model", 'resource == ARuntime::Model::"code"'),
                    f'{OWN} && principal.tenant == "{t}"') for t in TENANTS[:2]]
    return rules


def _output_rules() -> list[str]:
    return [
        _rule("output-own-tenant", "permit", _scope("check_output"), OWN),
        _rule("output-no-secrets", "forbid", _scope("check_output"),
              'context has findings && context.findings.contains("secret")'),
        _rule("output-card-numbers-cleared", "forbid", _scope("check_output"),
              'context has findings && context.findings.contains("card_number")',
              'principal.roles.contains("cleared")'),
        _rule("output-contacts-support", "forbid", _scope("check_output"),
              'context has findings && (context.findings.contains("email") || '
              'context.findings.contains("phone"))',
              'principal.roles.contains("support")'),
        _rule("share-prefix-engineers", "permit", _scope("publish_shared_prefix"),
              f'{OWN} && principal.roles.contains("engineer") && '
              "context has shared_prefix_tokens && context.shared_prefix_tokens <= 4096"),
        _rule("share-prefix-not-confidential", "forbid", _scope("publish_shared_prefix"),
              "context has confidentiality"),
    ]


def _tool_rules() -> list[str]:
    rules = [_rule("list-tools-own-tenant", "permit", _scope("list_tools"), OWN)]
    rules += [_rule(f"call-{name}", "permit",
                    _scope("call_tool", f'resource == ARuntime::Tool::"{name}"'), OWN)
              for name, effect in TOOLS.items() if not effect]
    rules += [
        _rule("side-effects-operators", "permit", _scope("call_tool"),
              f'{OWN} && resource.side_effect && principal.roles.contains("operator")'),
        _rule("refund-support", "permit",
              _scope("call_tool", 'resource == ARuntime::Tool::"refund"'),
              f'{OWN} && principal.roles.contains("support")'),
        _rule("refund-billing", "permit",
              _scope("call_tool", 'resource == ARuntime::Tool::"refund"'),
              f'{OWN} && principal.roles.contains("billing")'),
        _rule("no-deletes-by-guests-or-analysts", "forbid",
              _scope("call_tool", 'resource == ARuntime::Tool::"delete_account"'),
              'principal.roles.contains("guest") || principal.roles.contains("analyst")'),
        _rule("side-effects-not-secret", "forbid", _scope("call_tool"),
              'resource.side_effect && context has confidentiality && '
              'context.confidentiality == "secret"'),
    ]
    return rules


def _memory_rules() -> list[str]:
    mine = f"resource.tenant == principal.tenant && {OWN}"
    return [
        _rule("read-memory-own-tenant", "permit", _scope("read_memory"), mine),
        _rule("write-memory-engineers", "permit", _scope("write_memory"),
              f'{mine} && principal.roles.contains("engineer")'),
        _rule("write-memory-support", "permit", _scope("write_memory"),
              f'{mine} && principal.roles.contains("support")'),
        _rule("auditors-never-write", "forbid", _scope("write_memory"),
              'principal.roles.contains("auditor")'),
        _rule("memory-stays-in-tenant", "forbid", _scope("read_memory"),
              "resource.tenant != principal.tenant"),
        _rule("memory-writes-stay-in-tenant", "forbid", _scope("write_memory"),
              "resource.tenant != principal.tenant"),
        _rule("memory-of-the-billing-agent", "forbid", _scope("read_memory"),
              'resource.agent == "billing"', 'principal.roles.contains("billing")'),
    ]


def _run_rules() -> list[str]:
    mine = f"resource.tenant == principal.tenant && {OWN}"
    rules = [_rule(f"start-{flow}-{role}", "permit", _scope("start_run"),
                   f'{mine} && resource.flow == "{flow}" && principal.roles.contains("{role}")')
             for flow, roles in (("support", ("support", "analyst")),
                                 ("billing", ("billing", "support")),
                                 ("research", ("analyst", "engineer"))) for role in roles]
    rules += [
        _rule("cancel-operators", "permit", _scope("cancel_run"),
              f'{mine} && principal.roles.contains("operator")'),
        _rule("approve-approvers", "permit", _scope("approve"),
              f'{mine} && principal.roles.contains("approver")'),
        _rule("evidence-own-tenant", "permit", _scope("read_evidence"), mine),
        _rule("evidence-auditors-anywhere", "permit", _scope("read_evidence"),
              'principal.roles.contains("auditor")'),
        _rule("billing-runs-need-billing", "forbid", _scope("start_run"),
              'resource.flow == "billing"',
              'principal.roles.contains("billing") || principal.roles.contains("admin")'),
        _rule("no-self-approval-by-guests", "forbid", _scope("approve"),
              'principal.roles.contains("guest")'),
    ]
    return rules


def policy_rules() -> list[str]:
    rules = [*_model_rules(), *_output_rules(), *_tool_rules(), *_memory_rules(),
             *_run_rules()]
    tenant_rules = [_rule(f"{t}-{role}-reads-evidence", "permit", _scope("read_evidence"),
                          f'resource.tenant == "{t}" && principal.tenant == "{t}" && '
                          f'principal.roles.contains("{role}")')
                    for t in TENANTS for role in ("operator", "approver")]
    rules += tenant_rules[:RULES - len(rules)]  # the set is exactly RULES long
    assert len(rules) == RULES, len(rules)
    return rules


def policy_text() -> str:
    """The 60-rule policy's Cedar text (it validates against the built-in schema)."""
    return "\n".join(policy_rules())


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    principal: Principal
    action: Action
    resource: Resource
    context: dict[str, Any]


_TYPES = {Action.INVOKE_MODEL: "Model", Action.CHECK_OUTPUT: "Model",
          Action.PUBLISH_SHARED_PREFIX: "Model", Action.LIST_TOOLS: "Tool",
          Action.CALL_TOOL: "Tool", Action.READ_MEMORY: "Memory",
          Action.WRITE_MEMORY: "Memory", Action.APPROVE: "Run", Action.READ_EVIDENCE: "Run",
          Action.START_RUN: "Run", Action.CANCEL_RUN: "Run"}


def _resource(rng: random.Random, type_: str, tenant: str) -> Resource:
    owner = tenant if rng.random() < 0.85 else rng.choice(TENANTS)
    if type_ == "Model":
        name = rng.choice(MODELS)
        return Resource("Model", name, {"name": name})
    if type_ == "Tool":
        name = rng.choice(sorted(TOOLS))
        return Resource("Tool", name, {"name": name, "side_effect": TOOLS[name]})
    if type_ == "Memory":
        user, agent = f"user-{rng.randrange(20)}", rng.choice(FLOWS)
        return Resource("Memory", f"{owner}/{user}/{agent}",
                        {"tenant": owner, "user": user, "agent": agent})
    return Resource("Run", f"run-{rng.randrange(10_000):04d}",
                    {"tenant": owner, "flow": rng.choice(FLOWS)})


def _context(rng: random.Random, tenant: str, action: Action) -> dict[str, Any]:
    ctx: dict[str, Any] = {"tenant": tenant if rng.random() < 0.9 else rng.choice(TENANTS),
                           "time": NOW, "model": rng.choice(MODELS)}
    if rng.random() < 0.3:
        ctx["slo"] = {"ttft_ms": rng.choice((50, 200, 1000)), "tpot_ms": 50}
    if rng.random() < 0.2:
        ctx["confidentiality"] = rng.choice(("internal", "secret"))
    if action is Action.PUBLISH_SHARED_PREFIX:
        ctx["shared_prefix_tokens"] = rng.choice((256, 2048, 8192))
    if action is Action.CHECK_OUTPUT:
        ctx["findings"] = sorted(rng.sample(FINDINGS, rng.randrange(3)))
    return ctx


def requests(n: int, seed: int = 0, principals: int = 48) -> list[PolicyRequest]:
    """`n` requests from a pool of `principals`, each action on a resource of its type."""
    rng = random.Random(seed)
    people = [Principal(f"user-{i}", rng.choice(TENANTS),
                        frozenset(rng.sample(ROLES, rng.randint(1, 3))), "key", f"key-{i}")
              for i in range(principals)]
    out = []
    for _ in range(n):
        who, action = rng.choice(people), rng.choice(list(_TYPES))
        out.append(PolicyRequest(who, action, _resource(rng, _TYPES[action], who.tenant),
                                 _context(rng, who.tenant, action)))
    return out
