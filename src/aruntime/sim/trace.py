"""Mooncake-format traces as simulator requests: one JSON object a line with `timestamp` (ms),
`input_length`, `output_length` and `hash_ids` (one id per `block_tokens`-token prompt block)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MOONCAKE_BLOCK = 512


@dataclass(frozen=True, slots=True)
class SimRequest:
    arrival_s: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...]  # prompt block ids: equal ids mean equal prefix blocks
    block_tokens: int = MOONCAKE_BLOCK

    def __post_init__(self) -> None:
        if self.input_len < 1 or self.output_len < 1 or self.block_tokens < 1:
            raise ValueError("input_len, output_len and block_tokens must be positive")

    @property
    def full_keys(self) -> tuple[int, ...]:
        """The ids of the prompt's full blocks: the ones the engine can publish."""
        return self.hash_ids[:self.input_len // self.block_tokens]

    @property
    def usable_keys(self) -> tuple[int, ...]:
        """The leading blocks a prefix hit can cover: at least one token is always computed."""
        return self.hash_ids[:(self.input_len - 1) // self.block_tokens]


def load_trace(path: Path, limit: int | None = None, scale: int = 1) -> list[SimRequest]:
    """Requests in arrival order. `scale` divides every length (a 512-token block becomes
    512/scale tokens), which keeps the reuse structure while fitting a small model's context."""
    out: list[SimRequest] = []
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(SimRequest(
                    row["timestamp"] / 1000.0, max(1, -(-int(row["input_length"]) // scale)),
                    max(1, int(row["output_length"]) // scale), tuple(row["hash_ids"]),
                    max(1, MOONCAKE_BLOCK // scale)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a Mooncake trace row ({exc})") from None
            if limit is not None and len(out) >= limit:
                break
    out.sort(key=lambda r: r.arrival_s)
    return out


def compress(requests: list[SimRequest], rate: float) -> list[float]:
    """Arrival times scaled so the whole trace arrives at `rate` requests per second on average
    (DistServe's way of raising load while keeping the trace's burst shape)."""
    if not requests:
        return []
    t0 = requests[0].arrival_s
    span = requests[-1].arrival_s - t0
    native = (len(requests) - 1) / span if span > 0 else rate
    factor = native / rate
    return [(r.arrival_s - t0) * factor for r in requests]


def native_rate(requests: list[SimRequest]) -> float:
    span = requests[-1].arrival_s - requests[0].arrival_s if requests else 0.0
    return (len(requests) - 1) / span if span > 0 else 1.0
