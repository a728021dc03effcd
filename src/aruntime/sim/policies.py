"""Routing in the simulator is the serving router's own decision (`aruntime.cluster.router`), made
over the simulated workers as the pool makes it over real ones: each worker's queued prefill
tokens and requests, its running decodes, and the prefix its cache holds, by tier."""

from __future__ import annotations

from aruntime.cluster.router import POLICIES, Router, WorkerLoad
from aruntime.kv.directory_index import PrefixMatch
from aruntime.sim.trace import SimRequest
from aruntime.sim.worker import Worker

__all__ = ["POLICIES", "RouterPolicy"]


class RouterPolicy:
    def __init__(self, policy: str, seed: int, block_tokens: int) -> None:
        self.router = Router(policy, block_tokens, seed=seed)
        # round-robin and random look at neither loads nor caches: spare building them
        self.blind = policy in ("round-robin", "random")
        self._idle: list[WorkerLoad] = []
        self._ids: list[str] = []

    def choose(self, r: SimRequest, workers: list[Worker]) -> Worker:
        """Called once per arrival, before the request is queued on the worker it returns."""
        if len(self._ids) != len(workers):
            self._ids = [str(i) for i in range(len(workers))]
            self._idle = [WorkerLoad(i) for i in self._ids]
        if self.blind:
            return workers[int(self.router.choose(self._idle, [], r.input_len).worker)]
        loads, matches = [], []
        keys = r.usable_keys
        for wid, w in zip(self._ids, workers, strict=False):
            loads.append(WorkerLoad(wid, w.pending_tokens, len(w.running) + len(w.waiting),
                                    len(w.queue)))
            by_tier = w.cache.peek_tiers(keys)
            if by_tier:
                best = "device" if "device" in by_tier else "host"
                matches.append(PrefixMatch(wid, best, sum(by_tier.values()), by_tier))
        return workers[int(self.router.choose(loads, matches, r.input_len).worker)]
