"""What `bench route` measured: each policy run's per-request figures (`PolicyResult`), and a
policy's runs with the simulator's replay of each (`PolicyRuns`), whose figures are medians."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from aruntime.bench.route_warmup import WarmUp
from aruntime.bench.route_workload import Sent
from aruntime.bench.stats import p90


@dataclass
class PolicyResult:
    """Per request, in the order they were sent."""

    policy: str
    requests: list[Sent]
    ttft_s: list[float]
    sent_s: list[float]  # when each request was sent (after its previous turn came back)
    predicted: list[int]  # cached tokens, as the router predicted them
    used: list[int]  # ... and as the engine reused them
    workers: list[str]
    warm_up: WarmUp = field(default_factory=WarmUp)  # its pool's, before the run

    @property
    def hit_rate(self) -> float:
        return sum(self.used) / sum(len(s.prompt) for s in self.requests)

    @property
    def warm_ttft_s(self) -> list[float]:
        """After each group's first turn, which is cold under every policy."""
        return [t for t, s in zip(self.ttft_s, self.requests, strict=True) if s.turn > 0]

    @property
    def ttft_p50(self) -> float:
        return statistics.median(self.warm_ttft_s)

    @property
    def ttft_p90(self) -> float:
        return p90(self.warm_ttft_s)

    @property
    def ttft_p50_all(self) -> float:
        return statistics.median(self.ttft_s)

    @property
    def ttft_p90_all(self) -> float:
        return p90(self.ttft_s)


class _Median:
    """A PolicyRuns figure: the median of the same-named PolicyResult figure over its runs."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, runs: PolicyRuns, owner: type | None = None) -> float:
        return statistics.median(getattr(r, self.name) for r in runs.runs)


@dataclass
class PolicyRuns:
    """A policy's runs of the same workload and the simulator's TTFTs for each. Its figures are
    medians over the runs: on a shared machine near saturation one run's p50 moves by tens of
    percent with the machine's noise."""

    policy: str
    runs: list[PolicyResult] = field(default_factory=list)
    simulated: list[list[float]] = field(default_factory=list)  # per run, per request

    hit_rate = _Median()
    ttft_p50 = _Median()
    ttft_p90 = _Median()
    ttft_p50_all = _Median()
    ttft_p90_all = _Median()

    @property
    def audit_error(self) -> float:
        """Over every request of every run."""
        return sum(abs(p - u) for r in self.runs for p, u in zip(r.predicted, r.used,
                                                                 strict=True)) / max(
            1, sum(sum(r.used) for r in self.runs))

    @property
    def sim_p50(self) -> float:
        return statistics.median(statistics.median(t) for t in self.simulated)

    @property
    def sim_error(self) -> float:
        return abs(self.sim_p50 - self.ttft_p50_all) / self.ttft_p50_all

