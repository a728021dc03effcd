"""The discrete-event simulation of a cluster: `predict(requests, layout, policy)`.

Events are (time, order, kind, a, b) in one heap: an arrival, a worker's step ending, or a
prompt's KV reaching a decode worker. Colocated workers prefill and decode; in a P:D layout the
prefill workers send each prompt's KV over their link (one transfer at a time) to the decode
worker with the fewest sequences, and the first token counts from the prefill worker."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from aruntime.sim.costs import Costs
from aruntime.sim.policies import POLICIES, RouterPolicy
from aruntime.sim.prefix_cache import PrefixCache
from aruntime.sim.trace import MOONCAKE_BLOCK, SimRequest
from aruntime.sim.worker import Decode, Worker

ARRIVE, STEP, HANDOFF = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Layout:
    prefill: int  # workers that prefill (colocated: all workers)
    decode: int = 0  # 0: colocated

    def __post_init__(self) -> None:
        if self.prefill < 1 or self.decode < 0:
            raise ValueError("a layout needs >= 1 prefill worker and >= 0 decode workers")

    @property
    def name(self) -> str:
        return "colocated" if not self.decode else f"P:D {self.prefill}:{self.decode}"

    @classmethod
    def ratio(cls, workers: int, p: int, d: int) -> Layout:
        """`workers` split p:d, each side at least one."""
        n_p = min(workers - 1, max(1, round(workers * p / (p + d))))
        return cls(n_p, workers - n_p)


@dataclass(frozen=True, slots=True)
class SimConfig:
    cache_gb: float = 4.0  # device prefix cache per worker
    host_gb: float = 0.0  # host tier per worker (0: none)
    max_batched_tokens: int = 2048
    max_seqs: int = 64
    seed: int = 0
    # CPU cores the workers share (None: each worker has its own device), and what they are
    # worth with 1, 2, ... workers busy at once, as measured (empty: one core each, up to all).
    cores: int | None = None
    worth: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if (self.cache_gb < 0 or self.host_gb < 0 or self.max_batched_tokens < 1
                or self.max_seqs < 1):
            raise ValueError("cache sizes must be >= 0 and batch limits positive")
        if self.cores is not None and self.cores < 1:
            raise ValueError("cores must be >= 1")
        if any(not 0 < x <= b for b, x in enumerate(self.worth, 1)):
            raise ValueError("worth: with b workers busy, the cores are worth (0, b] workers")

    def slowdown(self, busy: int) -> float:
        """How much longer a step takes while `busy` workers (itself included) share the cores:
        up to `cores` run side by side; beyond, they take turns. Where the cores' worth was
        measured, it says instead (caches, memory bandwidth and the router share them too)."""
        if self.cores is None or busy <= 1:
            return 1.0
        worth = self.worth[busy - 1] if busy <= len(self.worth) else min(busy, self.cores)
        return max(1.0, busy / worth)


@dataclass(frozen=True, slots=True)
class SLO:
    ttft_s: float
    tpot_s: float
    attainment: float = 0.9


@dataclass(slots=True)
class Prediction:
    ttft_s: list[float]  # nan for a request not finished (the run stopped early)
    tpot_s: list[float]
    hit_tokens: int
    prompt_tokens: int
    complete: bool  # False when an SLO run stopped once the target was out of reach

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def attainment(self, slo: SLO) -> float:
        ok = sum(1 for a, b in zip(self.ttft_s, self.tpot_s, strict=False)
                 if a <= slo.ttft_s and b <= slo.tpot_s)
        return ok / len(self.ttft_s) if self.ttft_s else 1.0


def build_workers(layout: Layout, costs: Costs, config: SimConfig,
                  block_tokens: int) -> tuple[list[Worker], list[Worker]]:
    block_bytes = costs.kv_bytes_per_token * block_tokens
    dev, host = int(config.cache_gb * 1e9 // block_bytes), int(config.host_gb * 1e9 // block_bytes)
    role = "both" if not layout.decode else "prefill"
    pre = [Worker(i, role, costs, PrefixCache(dev, host), config.max_batched_tokens,
                  config.max_seqs, block_tokens) for i in range(layout.prefill)]
    dec = [Worker(layout.prefill + i, "decode", costs, PrefixCache(0), config.max_batched_tokens,
                  config.max_seqs, block_tokens) for i in range(layout.decode)]
    return pre, dec


def predict(requests: list[SimRequest], layout: Layout, policy: str, costs: Costs,
            config: SimConfig = SimConfig(), arrivals: list[float] | None = None,
            slo: SLO | None = None) -> Prediction:
    """Simulate the requests (arriving at `arrivals`, default their trace times) on the layout
    under the routing policy. With `slo`, stop as soon as the attainment target is out of reach
    (the Prediction is then incomplete and its attainment is below target)."""
    sim = _Run(requests, layout, policy, costs, config, slo)
    return sim.run(arrivals if arrivals is not None else [r.arrival_s for r in requests])


class _Run:
    def __init__(self, requests: list[SimRequest], layout: Layout, policy: str, costs: Costs,
                 config: SimConfig, slo: SLO | None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        self.requests, self.costs, self.slo = requests, costs, slo
        block_tokens = requests[0].block_tokens if requests else MOONCAKE_BLOCK
        self.prefill, self.decode = build_workers(layout, costs, config, block_tokens)
        self.workers = self.prefill + self.decode
        self.policy = RouterPolicy(policy, config.seed, block_tokens)
        self.config = config
        n = len(requests)
        self.first = [math.nan] * n
        self.ttft = [math.nan] * n
        self.tpot = [math.nan] * n
        self.misses = 0
        self.allowed = n - math.ceil(slo.attainment * n) + 1 if slo else n + 1
        self.heap: list[tuple[float, int, int, int, int]] = []
        self.order = 0

    def push(self, t: float, kind: int, a: int, b: int) -> None:
        self.order += 1
        heapq.heappush(self.heap, (t, self.order, kind, a, b))

    def run(self, arrivals: list[float]) -> Prediction:
        workers = self.workers
        for i, t in enumerate(arrivals):  # a request reaches its worker after its hops
            self.push(t + self.costs.request_s, ARRIVE, i, 0)
        self.arrivals = arrivals
        while self.heap and self.misses < self.allowed:
            t, _, kind, a, b = heapq.heappop(self.heap)
            if kind == ARRIVE:
                w = self.policy.choose(self.requests[a], self.prefill)
                w.enqueue_prefill(a, self.requests[a])
                self.wake(w, t)
            elif kind == STEP:
                w = workers[a]
                if b == w.gen:
                    self.step_done(w, t)
            else:
                w = workers[b]
                r = self.requests[a]
                w.incoming -= 1
                w.enqueue_decode(Decode(a, r.output_len - 1, r.input_len + 1))
                self.wake(w, t)
        hit = sum(w.hit_tokens for w in self.prefill)
        return Prediction(self.ttft, self.tpot, hit, sum(r.input_len for r in self.requests),
                          not self.heap)

    def wake(self, w: Worker, now: float) -> None:
        if w.plan is None:
            self.start(w, now)
        else:
            end = w.cut(now)
            if end is not None:
                self.push(end, STEP, w.wid, w.gen)

    def start(self, w: Worker, now: float) -> None:
        plan = w.plan_step(now)
        if self.config.cores is not None:
            self.reshare(now)
        elif plan is not None:
            self.push(now + plan.cost * plan.steps, STEP, w.wid, w.gen)

    def reshare(self, now: float) -> None:
        """Processor sharing: whenever the number of busy workers changes, every step in flight
        goes on at the new share of the cores, and its end moves."""
        busy = [x for x in self.workers if x.plan is not None]
        rate = 1.0 / self.config.slowdown(len(busy))
        for x in busy:
            assert x.plan is not None
            end = x.plan.advance(now, rate)
            x.gen += 1
            self.push(end, STEP, x.wid, x.gen)

    def step_done(self, w: Worker, now: float) -> None:
        prefilled, finished = w.finish_step()
        for d in finished:
            self.finish(d.index, now)
        for job in prefilled:
            i, r = job.index, job.request
            self.first[i] = now
            self.ttft[i] = now - self.arrivals[i]
            if self.slo and self.ttft[i] > self.slo.ttft_s:
                self.misses += 1
            decode = w.decode_after_prefill(job)
            if r.output_len <= 1:
                self.finish(i, now)
            elif decode is not None:
                w.enqueue_decode(decode)
            else:
                start = max(now, w.link_free)
                w.link_free = start + self.costs.transfer_s(r.input_len)
                target = min(self.decode,
                             key=lambda d: len(d.running) + len(d.waiting) + d.incoming)
                target.incoming += 1  # counts as load while its KV is on the wire
                self.push(w.link_free, HANDOFF, i, target.wid)
        self.start(w, now)

    def finish(self, i: int, now: float) -> None:
        out = self.requests[i].output_len
        self.tpot[i] = (now - self.first[i]) / (out - 1) if out > 1 else 0.0
        if self.slo and self.tpot[i] > self.slo.tpot_s and self.ttft[i] <= self.slo.ttft_s:
            self.misses += 1
