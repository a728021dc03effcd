"""Prometheus metrics of one server, spelled as vLLM spells them with the `aruntime:` prefix.

Engine counters and gauges are read from a fresh EngineStats at scrape time; latencies and
finish reasons are observed by the API as requests finish; the pool registers collectors of its
own. Each app owns its registry, so two servers in one process (tests) never share numbers, and
no series is formatted by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.kv.tiered_cache import LOAD_BUCKETS_S
from aruntime.policy.decision import Authorizer
from aruntime.policy.reloader import PolicyReloader

if TYPE_CHECKING:
    from aruntime.cluster.serving import ServingPool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0)


class _EngineCollector(Collector):
    """Turns the latest EngineStats snapshot into metric families at collect time."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.stats: EngineStats | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        if s is None:
            return
        G, C = GaugeMetricFamily, CounterMetricFamily
        for kind, name, doc, value in (
            (G, "num_requests_running", "Requests in the running batch.", s.num_running),
            (G, "num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
            (G, "kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).",
             s.kv_usage),
            (C, "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
             s.prefix_query_tokens_total),
            (C, "prefix_cache_hits", "Prompt tokens found in the prefix cache.",
             s.prefix_hit_tokens_total),
            (C, "prompt_tokens", "Prompt tokens admitted.", s.prompt_tokens_total),
            (C, "generation_tokens", "Tokens generated.", s.generation_tokens_total),
            (C, "num_preemptions", "Requests preempted to free KV blocks.", s.num_preempted_total),
            (C, "parallel_rank_restarts", "Parallel groups restarted after a rank was lost.",
             s.rank_restarts_total),
        ):
            family = kind(f"aruntime:{name}", doc, labels=["model_name"])
            family.add_metric([self.model_name], value)
            yield family
        yield from _tier_metrics(self.model_name, s)


def _tier_metrics(model_name: str, s: EngineStats) -> Iterator[Metric]:
    """Per-tier KV cache counters, bytes and restore latency (host, disk, redis)."""
    names = ["model_name", "tier"]
    counters = {
        "kv_tier_hits": "Blocks found in the tier.", "kv_tier_misses": "Blocks not in the tier.",
        "kv_tier_stale_blocks": "Corrupt, truncated or foreign blocks found and dropped.",
        "kv_tier_evictions": "Blocks evicted from the tier (demoted to the next one).",
    }
    families = {n: CounterMetricFamily(f"aruntime:{n}", d, labels=names)
                for n, d in counters.items()}
    size = GaugeMetricFamily("aruntime:kv_tier_bytes", "Bytes held by the tier.", labels=names)
    load = HistogramMetricFamily("aruntime:kv_tier_load_seconds",
                                 "Time to read and check one block from the tier.", labels=names)
    for t in s.tiers:
        labels = [model_name, t.tier]
        for n, value in zip(counters, (t.hits, t.misses, t.stale, t.evictions), strict=False):
            families[n].add_metric(labels, value)
        size.add_metric(labels, t.stored_bytes)
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, LOAD_BUCKETS_S), "+Inf"], t.load_buckets, strict=False):
            cumulative += count
            buckets.append((bound, cumulative))
        load.add_metric(labels, buckets, t.load_seconds_sum)
    yield from families.values()
    yield size
    yield load


class ServingCollector(Collector):
    """The collectors of whichever pool serves now (`serving()`): a promoted model release's
    engine takes over from the one the server started with (serve/released_model.py)."""

    def __init__(self, serving: Callable[[], ServingPool]) -> None:
        self.serving = serving

    def collect(self) -> Iterator[Metric]:
        for collector in self.serving().collectors():
            yield from collector.collect()


class PolicyCollector(Collector):
    """The policy in force (`aruntime:policy_info`: its version, signature and mode) and, with
    a watched bundle (serve --policy), its reloads and refused reloads by reason."""

    def __init__(self, authorizer: Authorizer, reloader: PolicyReloader | None = None) -> None:
        self.authorizer = authorizer
        self.reloader = reloader

    def collect(self) -> Iterator[Metric]:
        r = self.reloader
        info = GaugeMetricFamily("aruntime:policy_info", "The policy set in force (always 1).",
                                 labels=["version", "signature", "mode"])
        signature = r.bundle.signature if r else getattr(self.authorizer, "signature", "builtin")
        info.add_metric([self.authorizer.version, signature,
                         str(getattr(self.authorizer, "mode", "enforce"))], 1)
        yield info
        if r is None:
            return
        reloads = CounterMetricFamily("aruntime:policy_reloads",
                                      "New policy versions put in force without a restart.")
        reloads.add_metric([], r.reloads)
        yield reloads
        failures = CounterMetricFamily("aruntime:policy_reload_failures",
                                       "Changed bundles refused (the previous set stayed), by "
                                       "reason: signature or policy.", labels=["reason"])
        for reason in ("signature", "policy"):
            failures.add_metric([reason], r.failures[reason])
        yield failures


class Metrics:
    """One server's registry: its own series, the engine counters of the pool's last stats, and
    the collectors the pool brings (worker health, routing audit, KV transport)."""

    def __init__(self, model_name: str, collectors: Iterable[Collector] = ()) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self._engine = _EngineCollector(model_name)
        self.registry.register(self._engine)
        for collector in collectors:
            self.registry.register(collector)
        r = self.registry
        self.ttft = Histogram("aruntime:time_to_first_token_seconds", "Time to first token.",
                              ["model_name"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("aruntime:time_per_output_token_seconds",
                              "Time per output token after the first.", ["model_name"],
                              buckets=_TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("aruntime:e2e_request_latency_seconds", "End-to-end latency.",
                             ["model_name"], buckets=_LATENCY_BUCKETS, registry=r)
        self.success = Counter("aruntime:request_success", "Finished requests by reason.",
                               ["model_name", "finished_reason"], registry=r)
        self.rejected = Counter("aruntime:requests_rejected",
                                "Requests refused by admission control, by the SLO part missed.",
                                ["model_name", "reason"], registry=r)
        # by limit, not by tenant: tenants are unbounded, a label per tenant would be too
        self.quota_rejected = Counter("aruntime:quota_rejections",
                                      "Requests refused by a tenant quota, by the limit hit.",
                                      ["limit"], registry=r)

    def observe_finished(self, last: RequestOutput, num_generated: int, end_time: float) -> None:
        """One engine request ended: `last` is its final delta (or a synthetic abort)."""
        name = self.model_name
        self.success.labels(name, last.finish_reason or "abort").inc()
        if not last.arrival_time:
            return
        self.e2e.labels(name).observe(max(0.0, end_time - last.arrival_time))
        if last.first_token_time is not None:
            self.ttft.labels(name).observe(max(0.0, last.first_token_time - last.arrival_time))
            if num_generated > 1:
                per_token = (end_time - last.first_token_time) / (num_generated - 1)
                self.tpot.labels(name).observe(max(0.0, per_token))

    def render(self, stats: EngineStats | None) -> bytes:
        self._engine.stats = stats
        return generate_latest(self.registry)
