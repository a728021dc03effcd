"""Routing policies: which worker a new request's prefill goes to. Each is a class with one
method, `choose(request, workers)`, named in POLICIES."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod

from aruntime.sim.trace import SimRequest
from aruntime.sim.worker import Worker


class Policy(ABC):
    @abstractmethod
    def choose(self, r: SimRequest, workers: list[Worker]) -> Worker:
        """Called once per arrival, before the request is queued; may change only the policy."""


class RoundRobin(Policy):
    def __init__(self, seed: int = 0) -> None:
        self.next = 0

    def choose(self, r: SimRequest, workers: list[Worker]) -> Worker:
        w = workers[self.next % len(workers)]
        self.next += 1
        return w


class Random(Policy):
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def choose(self, r: SimRequest, workers: list[Worker]) -> Worker:
        return workers[self.rng.randrange(len(workers))]


class LeastLoaded(Policy):
    def __init__(self, seed: int = 0) -> None:
        pass

    def choose(self, r: SimRequest, workers: list[Worker]) -> Worker:
        return min(workers, key=Worker.load_s)


class KVAware(Policy):
    """Least predicted time to first token: the prompt tokens the worker's cache would not
    cover, plus the work already queued there."""

    def __init__(self, seed: int = 0) -> None:
        pass

    def choose(self, r: SimRequest, workers: list[Worker]) -> Worker:
        per_token = workers[0].costs.prefill_token_s
        return min(workers, key=lambda w: (r.input_len - w.predicted_hit_tokens(r)) * per_token
                   + w.load_s())


POLICIES: dict[str, type[Policy]] = {
    "kv": KVAware, "round-robin": RoundRobin, "random": Random, "least-loaded": LeastLoaded}
