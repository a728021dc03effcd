"""DistServe goodput: the highest request rate at which at least 90% of requests meet both the
TTFT and the TPOT target. The trace is time-compressed to each trial rate (its burst shape kept)
and the rate is bracketed by doubling or halving, then bisected to a relative tolerance."""

from __future__ import annotations

import math
from dataclasses import dataclass

from aruntime.sim.costs import Costs
from aruntime.sim.model import SLO, Layout, Prediction, SimConfig, predict
from aruntime.sim.trace import SimRequest, compress, native_rate


@dataclass(slots=True)
class Goodput:
    rate: float  # req/s; 0.0 when even the lowest trial rate misses the SLO
    prediction: Prediction | None  # the run at `rate`
    runs: int


def meets(requests: list[SimRequest], layout: Layout, policy: str, costs: Costs,
          config: SimConfig, slo: SLO, rate: float) -> Prediction | None:
    """The run at `rate` when it meets the SLO, else None (stopped as soon as it cannot)."""
    p = predict(requests, layout, policy, costs, config, compress(requests, rate), slo)
    return p if p.complete and p.attainment(slo) >= slo.attainment else None


def search(requests: list[SimRequest], layout: Layout, policy: str, costs: Costs,
           config: SimConfig, slo: SLO, tolerance: float = 0.05, floor: float = 1 / 64,
           ceiling: float = 4096) -> Goodput:
    """`floor`, `ceiling`: the lowest and highest trial rates, as multiples of the trace's
    native rate (a run that passes at the ceiling reports the ceiling)."""
    runs = 0

    def trial(rate: float) -> Prediction | None:
        nonlocal runs
        runs += 1
        return meets(requests, layout, policy, costs, config, slo, rate)

    rate = native_rate(requests)
    lowest, highest = rate * floor, rate * ceiling
    best = trial(rate)
    lo, hi = (rate, math.inf) if best else (0.0, rate)
    while best and math.isinf(hi):  # double until a rate fails
        if lo * 2 > highest:
            return Goodput(lo, best, runs)
        nxt = trial(lo * 2)
        if nxt is None:
            hi = lo * 2
        else:
            lo, best = lo * 2, nxt
    while best is None and hi / 2 >= lowest:  # halve until a rate passes
        best = trial(hi / 2)
        if best is None:
            hi /= 2
        else:
            lo = hi / 2
    if best is None:
        return Goodput(0.0, None, runs)
    while hi / lo > 1 + tolerance:
        mid = math.sqrt(lo * hi)
        got = trial(mid)
        if got is None:
            hi = mid
        else:
            lo, best = mid, got
    return Goodput(lo, best, runs)
