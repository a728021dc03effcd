"""The policy's recent decisions at the server's decision points, for the operator console:
the last RECENT (who, what, on what, the answer and the rules that gave it) and the denials
counted by rule since the server started. A denial no rule determined is Cedar's default deny,
counted as DEFAULT_DENY. The signed decision log (decisions.jsonl) stays the record; this is a
window on it, in memory, holding no request content."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from aruntime.policy.decision import Decision
from aruntime.policy.identity import Principal

RECENT = 500
DEFAULT_DENY = "(no permit: default deny)"


class RecentDecisions:
    def __init__(self, recent: int = RECENT) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.denials: Counter[str] = Counter()

    def add(self, who: Principal, decision: Decision, via: str) -> None:
        self.recent.append({"at": time.time(), "principal": who.id, "tenant": who.tenant,
                            "via": via, "action": decision.action,
                            "resource": decision.resource, "decision": decision.word,
                            "enforced": decision.enforced, "mode": str(decision.mode),
                            "reasons": list(decision.determining),
                            "policy_version": decision.policy_version})
        if not decision.allowed:
            self.denials.update(decision.determining or (DEFAULT_DENY,))

    def view(self) -> dict[str, Any]:
        return {"decisions": list(self.recent), "denials_by_rule": dict(self.denials)}
