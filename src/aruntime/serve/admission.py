"""Admission control: answer 429 at once when the queue would make a request miss its SLO,
rather than accept it and let everything time out. Pure and torch-free.

A worker's future is predicted from its load (`WorkerLoad`: prefill tokens queued ahead,
requests waiting for a first token, decodes running) and from costs the engine itself showed:

    TTFT = (queued prefill tokens + this prompt's uncached tokens) x prefill s/token
           + (requests ahead + 1) x one step at the running batch
    TPOT = one step at (running + this request's decodes)

`Costs` are exponential moving averages over finished requests' own timings (`RequestOutput`'s
scheduled / first-token / finish times). Until something was observed they hold optimistic
defaults, so a fresh server admits rather than rejects on numbers it never measured. What is
not modelled: a full batch (`max_num_seqs`) making the queue wait for decodes to finish, and
preemption; both only make the real TTFT worse, so a rejection is never caused by them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from aruntime.cluster.router import WorkerLoad
from aruntime.contracts.request import SLO
from aruntime.engine.outputs import RequestOutput

# Optimistic until measured: a fast GPU's prefill rate and decode step.
DEFAULT_PREFILL_S_PER_TOKEN = 2e-5
DEFAULT_STEP_S = 0.005
EMA_ALPHA = 0.2  # weight of the newest observation
# A step's fixed cost (launches, sampling, scheduling) in running decodes' worth: scales an
# observed step time to another batch size as (batch + k) / (observed batch + k).
STEP_FIXED_DECODES = 8.0
DEFAULT_SLACK = 1.0  # reject when predicted TTFT > target x slack


@dataclass(frozen=True, slots=True)
class Prediction:
    worker_id: str
    ttft_s: float
    tpot_s: float


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # "ttft" | "tpot": the metric label
    message: str
    retry_after_s: int  # when the queue ahead should have drained enough


class Costs:
    """What a step costs on this deployment, learned online from finished requests."""

    def __init__(self, prefill_s_per_token: float = DEFAULT_PREFILL_S_PER_TOKEN,
                 step_s: float = DEFAULT_STEP_S, step_batch: float = 1.0,
                 alpha: float = EMA_ALPHA) -> None:
        self.prefill_s_per_token = prefill_s_per_token
        self.step_s = step_s  # one decode step, at `step_batch` running decodes
        self.step_batch = step_batch
        self.alpha = alpha
        self.observed = 0

    def step_at(self, batch: int) -> float:
        k = STEP_FIXED_DECODES
        return self.step_s * (max(1, batch) + k) / (self.step_batch + k)

    def observe(self, out: RequestOutput, num_generated: int, batch: int) -> None:
        """One engine request finished; `batch` is the decodes running beside it (itself
        included) when its first token came."""
        first, start, end = out.first_token_time, out.scheduled_time, out.finish_time
        if first is None or end is None:
            return  # aborted before a token: nothing measured
        a = self.alpha if self.observed else 1.0  # the first observation replaces the default
        if num_generated > 1 and end > first:
            tpot = (end - first) / (num_generated - 1)
            self.step_s += a * (tpot - self.step_s)
            self.step_batch += a * (max(1, batch) - self.step_batch)
        computed = max(1, out.num_prompt_tokens - out.num_cached_tokens)
        if start is not None and first >= start:
            per_token = max(0.0, first - start - self.step_at(batch)) / computed
            self.prefill_s_per_token += a * (per_token - self.prefill_s_per_token)
        self.observed += 1


class Admission:
    """`predict` each candidate worker, then `check` the request's SLO against the best."""

    def __init__(self, costs: Costs | None = None, *, slack: float = DEFAULT_SLACK) -> None:
        if slack <= 0:
            raise ValueError("admission slack must be positive")
        self.costs = costs or Costs()
        self.slack = slack

    def predict(self, load: WorkerLoad, uncached_tokens: int, decodes: int = 1) -> Prediction:
        c = self.costs
        step = c.step_at(load.running + 1)
        ttft = ((load.queued_prefill_tokens + max(1, uncached_tokens)) * c.prefill_s_per_token
                + (load.queued_requests + 1) * step)
        return Prediction(load.worker_id, ttft, c.step_at(load.running + decodes))

    def check(self, slo: SLO | None, predictions: Sequence[Prediction]) -> Rejection | None:
        """None when some worker is predicted to meet the SLO (or there is none to meet)."""
        if slo is None or (slo.ttft_ms is None and slo.tpot_ms is None) or not predictions:
            return None
        misses = [self._miss(slo, p) for p in predictions]
        if any(m is None for m in misses):
            return None
        best = min(range(len(predictions)), key=lambda i: predictions[i].ttft_s)
        miss = misses[best]
        assert miss is not None
        return miss

    def _miss(self, slo: SLO, p: Prediction) -> Rejection | None:
        if slo.ttft_ms is not None and p.ttft_s * 1000 > slo.ttft_ms * self.slack:
            wait = p.ttft_s - slo.ttft_ms * self.slack / 1000
            return Rejection("ttft", (
                f"this request's TTFT target cannot be met at the current load: predicted "
                f"time to first token {p.ttft_s * 1000:.0f} ms > target {slo.ttft_ms:g} ms "
                f"(worker {p.worker_id}); retry later or relax aruntime.slo.ttft_ms"),
                max(1, math.ceil(wait)))
        if slo.tpot_ms is not None and p.tpot_s * 1000 > slo.tpot_ms:
            return Rejection("tpot", (
                f"this request's TPOT target cannot be met at the current load: predicted "
                f"time per output token {p.tpot_s * 1000:.1f} ms > target {slo.tpot_ms:g} ms "
                f"(worker {p.worker_id}); retry later or relax aruntime.slo.tpot_ms"), 1)
        return None
