"""The statistics the benchmarks report, computed one way."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def p90(values: list[float]) -> float:
    """The 90th percentile (statistics' default, exclusive method) of at least two values."""
    return statistics.quantiles(values, n=10)[-1]


def median_of(items: list[T], key: Callable[[T], float]) -> T:
    """The median item by `key` (the lower median when the count is even): the round that
    counts when a noisy machine runs a system several times."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


def p99(values: list[float]) -> float:
    """The 99th percentile (the same method as `p90`) of at least two values."""
    return statistics.quantiles(values, n=100)[-1]
