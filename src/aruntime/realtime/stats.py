"""A loop's lateness: every sample kept (a loop of 10 s at 1 kHz is 10,000 integers), with the
percentiles a real-time report gives — p50, p99, p99.9 and the maximum — by nearest rank."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Lateness:
    samples_ns: list[int] = field(default_factory=list)

    def add(self, ns: int) -> None:
        self.samples_ns.append(max(0, ns))

    def percentile_ns(self, q: float) -> int | None:
        if not self.samples_ns:
            return None
        ordered = sorted(self.samples_ns)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    def summary_us(self) -> dict[str, float | None]:
        def us(ns: int | None) -> float | None:
            return None if ns is None else round(ns / 1e3, 1)
        return {"p50": us(self.percentile_ns(50)), "p99": us(self.percentile_ns(99)),
                "p999": us(self.percentile_ns(99.9)),
                "max": us(max(self.samples_ns) if self.samples_ns else None)}
