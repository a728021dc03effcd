"""What live traffic shows of each version in a rollout: one sample a request (whether it
failed, its TTFT and TPOT, whether the policy refused it), and the statistics analysis reads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    version: str
    ok: bool
    ttft_s: float | None = None
    tpot_s: float | None = None
    refused: bool = False


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0-100) of `values`; None of none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def statistic(measure: str, samples: Sequence[Sample]) -> float | None:
    """`error_rate`, `refusal_rate`, or `ttft_pNN` / `tpot_pNN` over the samples."""
    if not samples:
        return None
    if measure == "error_rate":
        return sum(not s.ok for s in samples) / len(samples)
    if measure == "refusal_rate":
        return sum(s.refused for s in samples) / len(samples)
    kind, _, q = measure.partition("_p")
    values = [v for s in samples if s.ok
              for v in [s.ttft_s if kind == "ttft" else s.tpot_s] if v is not None]
    return percentile(values, float(q))
