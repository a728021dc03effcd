"""An appraisal policy: what evidence must show for a verifier to affirm it. A JSON file:

    {"policy_id": "prod-2026-12", "accepted_attesters": ["tdx", "snp"],
     "reference_values": {"aruntime": ["sha256:…"], "model": ["sha256:…"]},
     "min_versions": {"aruntime": "0.14"}, "allow_debug": false, "max_age_s": 300}

`accepted_attesters` must name `software` for the software attester to be accepted: a policy
that lists only hardware types never accepts it, whatever else it shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aruntime.confidential.evidence import ATTESTER_TYPES
from aruntime.jsonfile import read_json_object


class PolicyFileError(ValueError):
    """An appraisal policy that cannot be read or does not make sense."""


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@dataclass(frozen=True)
class AppraisalPolicy:
    policy_id: str
    accepted_attesters: frozenset[str]
    reference_values: dict[str, frozenset[str]] = field(default_factory=dict)
    min_versions: dict[str, str] = field(default_factory=dict)
    allow_debug: bool = False
    max_age_s: int = 300

    @classmethod
    def from_json(cls, data: Any) -> AppraisalPolicy:
        if not isinstance(data, dict) or not isinstance(data.get("policy_id"), str):
            raise PolicyFileError("an appraisal policy is an object with a policy_id")
        accepted = data.get("accepted_attesters")
        if not isinstance(accepted, list) or not accepted or set(accepted) - ATTESTER_TYPES:
            raise PolicyFileError("accepted_attesters must list some of "
                                  f"{', '.join(sorted(ATTESTER_TYPES))}")
        refs = data.get("reference_values", {})
        if not isinstance(refs, dict) or not all(isinstance(v, list) for v in refs.values()):
            raise PolicyFileError("reference_values maps a measurement to a list of digests")
        max_age = data.get("max_age_s", 300)
        if not isinstance(max_age, int) or max_age < 1:
            raise PolicyFileError("max_age_s must be a positive number of seconds")
        return cls(data["policy_id"], frozenset(accepted),
                   {k: frozenset(v) for k, v in refs.items()},
                   dict(data.get("min_versions", {})), bool(data.get("allow_debug", False)),
                   max_age)

    @classmethod
    def load(cls, path: Path) -> AppraisalPolicy:
        return cls.from_json(read_json_object(path, PolicyFileError))

    def to_json(self) -> dict[str, Any]:
        return {"policy_id": self.policy_id,
                "accepted_attesters": sorted(self.accepted_attesters),
                "reference_values": {k: sorted(v) for k, v in self.reference_values.items()},
                "min_versions": self.min_versions, "allow_debug": self.allow_debug,
                "max_age_s": self.max_age_s}
