"""Timestamped inputs with a maximum age (ROS 2's lifespan, history depth 1): a reader gets the
newest value by its stamp when it is at most `max_age_ns` old at the reader's now, or nothing —
a stale input is never used, and the step's declared "no input" behaviour applies. An arrival
stamped before the value held never replaces it (out-of-order delivery keeps the newest); one
stamped after the reader's now (a skewed clock) is not used either."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Stamped(Generic[T]):
    value: T
    at_ns: int  # when it was measured, on the loop's timebase


class FreshInput(Generic[T]):
    def __init__(self, max_age_ns: int) -> None:
        if max_age_ns <= 0:
            raise ValueError("an input's maximum age must be positive")
        self.max_age_ns = max_age_ns
        self._held: Stamped[T] | None = None
        self._lock = threading.Lock()  # a writer thread, the loop's reader
        self.stale_reads = 0  # reads that found nothing fresh

    def put(self, value: T, at_ns: int) -> None:
        with self._lock:
            if self._held is None or at_ns > self._held.at_ns:
                self._held = Stamped(value, at_ns)

    def get(self, now_ns: int) -> Stamped[T] | None:
        with self._lock:
            held = self._held
        if held is None or not 0 <= now_ns - held.at_ns <= self.max_age_ns:
            self.stale_reads += 1
            return None
        return held
