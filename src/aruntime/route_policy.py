"""A router policy and its weights, as the router prices candidates and as a route release
holds them: `{"policy": "kv", "weights": {"decode": 16, "request": 64, "cache": 2}}`. A leaf, so
the release registry checks a route release with the very rules the router runs it by."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

POLICIES = ("kv", "round-robin", "random", "least-loaded")
WEIGHTS = ("decode", "request", "cache")  # a route release's weights: `{NAME}_weight` here
DECODE_WEIGHT = 16.0  # prefill tokens one running decode is worth, per step it shares
# Prefill tokens a queued request is worth beyond its own: each one's first token takes a
# whole forward pass, however few tokens it computes, so counts balance as well as tokens.
REQUEST_WEIGHT = 64.0
# Queued prefill tokens a cached token is worth. A hit saves its compute for good, where a queue
# is a wait the other candidates mostly share under load; a miss also copies the prefix into a
# second cache. The simulator replaying `bench route` runs put kv's warm-turn p90 TTFT 30-60%
# lower at 2 than at 1 (llm-d's default scorer weights favour the prefix over load likewise).
CACHE_WEIGHT = 2.0


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """How the router prices candidates (cluster/router.py)."""

    policy: str = "kv"
    decode_weight: float = DECODE_WEIGHT
    request_weight: float = REQUEST_WEIGHT
    cache_weight: float = CACHE_WEIGHT

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown router policy {self.policy!r}; choose from "
                             f"{', '.join(POLICIES)}")
        for weight in WEIGHTS:
            name = f"{weight}_weight"
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"the router's {name} is a number >= 0, not {value!r}")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoutePolicy:
        """ValueError (naming what is wrong) for anything but a policy and known weights."""
        weights = data.get("weights", {})
        if not isinstance(weights, dict):
            raise ValueError("a route's weights are an object of numbers")
        unknown = (set(data) - {"policy", "weights"}) | (set(weights) - set(WEIGHTS))
        if unknown:
            raise ValueError(f"a route names a policy and weights ({', '.join(WEIGHTS)}); "
                             f"not {', '.join(sorted(map(str, unknown)))}")
        return cls(str(data.get("policy")),
                   **{f"{name}_weight": value for name, value in weights.items()})
