"""A resource's release policy (Azure Secure Key Release's shape): `allOf` / `anyOf` over
conditions on the attestation result's claims, e.g.

    {"allOf": [{"claim": "status", "equals": "affirming"},
               {"claim": "attester", "in": ["tdx", "snp"]},
               {"claim": "policy_id", "equals": "prod-2026-12"}]}

Claims: `status`, `attester`, `policy_id`, `key_hash`, and `tv.<claim>` for each entry of the
trustworthiness vector. A condition on a claim the result lacks is false: default deny.
"""

from __future__ import annotations

from typing import Any

from aruntime.confidential.ear import Ear


class ReleasePolicyError(ValueError):
    """A release policy that is not one."""


def claims_of(ear: Ear) -> dict[str, Any]:
    out: dict[str, Any] = {"status": ear.status, "attester": ear.attester,
                           "policy_id": ear.policy_id, "key_hash": ear.key_hash}
    out.update({f"tv.{k}": v for k, v in ear.trust_vector.items()})
    return out


def check(policy: Any) -> None:
    """ReleasePolicyError naming the first malformed part."""
    if not isinstance(policy, dict):
        raise ReleasePolicyError("a release policy is an object")
    for op in ("allOf", "anyOf"):
        if op in policy:
            if not isinstance(policy[op], list) or not policy[op]:
                raise ReleasePolicyError(f"{op} takes a non-empty list")
            for part in policy[op]:
                check(part)
            return
    if not isinstance(policy.get("claim"), str) or not ({"equals", "in"} & set(policy)):
        raise ReleasePolicyError("a condition is {\"claim\": NAME, \"equals\": V} or "
                                 "{\"claim\": NAME, \"in\": [V, ...]}")


def allows(policy: dict[str, Any], claims: dict[str, Any]) -> bool:
    if "allOf" in policy:
        return all(allows(p, claims) for p in policy["allOf"])
    if "anyOf" in policy:
        return any(allows(p, claims) for p in policy["anyOf"])
    if policy["claim"] not in claims:
        return False
    value = claims[policy["claim"]]
    return value == policy["equals"] if "equals" in policy else value in policy["in"]
