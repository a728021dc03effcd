"""A pool's own Prometheus series, as collectors for the server's one registry (serve/metrics.py):
worker health by role, the routing audit per role and policy, and a disaggregated pool's KV
transport. Read from the pool at each scrape; named `aruntime:` like every other series."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aruntime.cluster.audit import Audit, TransportAudit


class RoleGroup(Protocol):
    """What the collectors read of one role's workers (a WorkerPool)."""

    role: str
    audit: Audit

    @property
    def policy(self) -> str: ...
    def health(self) -> dict[str, bool]: ...


_ROUTE_SERIES = (
    ("route_requests", "requests", "Routed requests whose prediction was checked."),
    ("route_cached_tokens_predicted", "predicted_tokens",
     "Prompt tokens the router predicted the chosen worker had cached."),
    ("route_cached_tokens_used", "used_tokens",
     "Prompt tokens the chosen worker's engine actually reused."),
    ("route_cached_tokens_abs_error", "abs_error_tokens",
     "Sum over requests of |predicted - used| cached tokens."),
    ("route_retries", "retries", "Requests retried on another worker."),
    ("route_failed_mid_stream", "failed_mid_stream",
     "Requests that failed because their worker died while streaming."),
)


class PoolCollector(Collector):
    """Worker health and the routing audit of each role group of a pool."""

    def __init__(self, groups: Callable[[], Sequence[RoleGroup]]) -> None:
        self._groups = groups

    def collect(self) -> Iterator[Metric]:
        groups = self._groups()
        up = GaugeMetricFamily("aruntime:worker_up", "Whether a pool worker's engine is running.",
                               labels=["worker", "role"])
        for g in groups:
            for worker, alive in g.health().items():
                up.add_metric([worker, g.role], int(alive))
        yield up
        for name, field, doc in _ROUTE_SERIES:
            family = CounterMetricFamily(f"aruntime:{name}", doc, labels=["role", "policy"])
            for g in groups:
                family.add_metric([g.role, g.policy], getattr(g.audit, field))
            yield family


class TransportCollector(Collector):
    """A disaggregated pool's handoffs and its KV transport's restores."""

    def __init__(self, audit: TransportAudit) -> None:
        self.audit = audit

    def collect(self) -> Iterator[Metric]:
        a = self.audit
        yield _counter("disagg_handoffs", a.handoffs,
                       "Requests prefilled on a prefill worker and decoded on a decode worker.")
        yield _counter("disagg_prefill_fallbacks", a.prefill_fallbacks,
                       "Requests a decode worker prefilled because no prefill worker answered.")
        yield _counter("kv_transport_restored_bytes", a.restored_bytes,
                       "KV bytes decode workers restored from the transport.")
        yield _counter("kv_transport_restore_seconds", a.restore_seconds,
                       "Seconds those restores took, reads and copies into device blocks "
                       "included.")
        yield GaugeMetricFamily("aruntime:kv_transport_bandwidth_bytes_per_second",
                                "Transport bytes restored per second of restore time.",
                                value=a.bandwidth)


def _counter(name: str, value: float, doc: str) -> CounterMetricFamily:
    return CounterMetricFamily(f"aruntime:{name}", doc, value=value)
