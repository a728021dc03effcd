"""What the server served lately, for the operator console: each finished engine request's
time to first token, time per output token and end-to-end latency, by model and tenant (the
last RECENT of them, in memory), and the requests running now. /metrics holds the same
latencies as histograms without the tenant (tenants are unbounded; a label each would be too);
this is a bounded window, not a second record — the evidence log is that."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aruntime.engine.outputs import RequestOutput

if TYPE_CHECKING:
    from aruntime.serve.generation import Generation

RECENT = 2000


@dataclass(frozen=True, slots=True)
class Served:
    request_id: str  # the engine's, one per choice (`cmpl-…-0`)
    response_id: str  # the API's (`cmpl-…`): the id the client was given
    at: float  # when it ended (Unix seconds)
    model: str
    tenant: str
    finish_reason: str
    tokens: int
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None


class Traffic:
    def __init__(self, recent: int = RECENT) -> None:
        self.recent: deque[Served] = deque(maxlen=recent)
        self._live: dict[str, tuple[Generation, str]] = {}

    def begin(self, gen: Generation, model: str) -> None:
        """A request admitted and about to run on the engine."""
        if not gen.shadow:  # a shadow's copy is a candidate's sample, not traffic
            self._live[gen.id] = (gen, model)

    def end(self, gen: Generation, ended: list[tuple[RequestOutput, int, float]]) -> None:
        """It ended: each engine request's final delta (or a synthetic abort), its output
        tokens and when it ended."""
        live = self._live.pop(gen.id, None)
        if live is None:
            return
        for last, tokens, end_time in ended:
            arrived, first = last.arrival_time, last.first_token_time
            ttft = first - arrived if arrived and first is not None else None
            tpot = (end_time - first) / (tokens - 1) if first is not None and tokens > 1 else None
            self.recent.append(Served(last.request_id, gen.id, end_time, live[1], gen.tenant,
                                      last.finish_reason or "abort", tokens, _s(ttft),
                                      _s(tpot), _s(end_time - arrived) if arrived else None))

    def view(self, since: float = 0.0) -> dict[str, Any]:
        now = time.time()
        live = [{"request_id": gen.id, "model": model, "tenant": gen.tenant,
                 "started": gen.started, "age_s": _s(now - gen.started),
                 "tokens": sum(c.num_tokens for c in gen.choices)}
                for gen, model in self._live.values()]
        return {"now": now, "live": live,
                "requests": [asdict(r) for r in self.recent if r.at > since]}


def _s(seconds: float | None) -> float | None:
    return None if seconds is None else round(max(0.0, seconds), 6)
