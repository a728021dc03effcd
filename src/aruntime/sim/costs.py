"""What one engine step costs on this machine: the calibration record the simulator runs on.

A step batches prefill chunk tokens with one decode token per running sequence (chunked prefill,
continuous batching); each is a row the weights multiply. Its cost is what it does:

    step_s = step_s0 + weights_s(rows)
           + prefill_attn_s * sum(context each prefill token sees)
           + prefill_ctx_s * (context already in the KV cache of each prefill chunk)
           + prefill_seq_s * (prompts whose prefill starts in the step)
           + decode_seq_s * batch + decode_ctx_s * sum(context of each decoding sequence)

`weights_s` is not linear on a CPU: one row is a matrix-vector product, two or more a matrix
product that costs a jump more; while rows are few, reading the weights bounds a step; beyond
that, compute does, a `prefill_token_s` a row. So it runs along measured knots (`rows_s`, seconds
beyond a one-row step) and then linearly; without knots it is `prefill_token_s` a row.

The first step after an engine had nothing to do costs `wake_s` more (its caches went cold).
Moving KV costs `kv_bytes_per_token` over a tier's restore bandwidth or the network's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from aruntime import paths

VERSION = 2


@dataclass(frozen=True, slots=True)
class Costs:
    step_s0: float  # fixed cost of a one-row engine step (scheduling, sampling, Python)
    prefill_token_s: float  # per row beyond the last knot of `rows_s` (the weights' matmuls)
    prefill_attn_s: float  # per (prefill token x context token it attends to)
    decode_seq_s: float  # per decoding sequence in a step
    decode_ctx_s: float  # per context token read by a decoding sequence
    kv_bytes_per_token: int
    prefill_ctx_s: float = 0.0  # per token of context a prefill chunk gathers from the cache
    prefill_seq_s: float = 0.0  # per prompt started (admission, prefix lookup, first sampling)
    rows_s: tuple[tuple[int, float], ...] = ()  # (rows, seconds beyond a one-row step), rising
    restore_gbps: dict[str, float] = field(default_factory=dict)  # tier name -> GB/s into device
    network_gbps: float = 1.0  # KV transfer between workers (prefill -> decode)
    request_s: float = 0.0  # a request's hops outside the engine step (router, IPC, streaming)
    wake_s: float = 0.0  # what a step costs more when its engine had nothing to do before it
    model: str = ""  # checkpoint name@revision the figures were measured on
    hardware: str = ""
    measured_at: str = ""  # RFC 3339 UTC, or "" for the built-in defaults
    source: str = "defaults"  # "calibrate" or "defaults"

    def __post_init__(self) -> None:
        for name in ("step_s0", "prefill_token_s", "prefill_attn_s", "prefill_ctx_s",
                     "prefill_seq_s", "decode_seq_s", "decode_ctx_s", "request_s", "wake_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.kv_bytes_per_token <= 0 or self.network_gbps <= 0:
            raise ValueError("kv_bytes_per_token and network_gbps must be positive")
        if any(v <= 0 for v in self.restore_gbps.values()):
            raise ValueError("restore bandwidths must be positive")
        if any(r <= 1 or s < 0 for r, s in self.rows_s) or \
                [r for r, _ in self.rows_s] != sorted({r for r, _ in self.rows_s}):
            raise ValueError("rows_s: knots above one row, in rising order, seconds >= 0")

    def weights_s(self, rows: int) -> float:
        """The weights' work on a step's rows: its prefill tokens, one per decoding sequence."""
        if not self.rows_s:
            return self.prefill_token_s * rows
        x0, y0 = 1, 0.0
        for x1, y1 in self.rows_s:
            if rows <= x1:
                return y0 + (y1 - y0) * max(0, rows - x0) / (x1 - x0)
            x0, y0 = x1, y1
        return y0 + self.prefill_token_s * (rows - x0)

    def chunk_s(self, tokens: int, context: int) -> float:
        """What a prefill chunk adds to its step beyond `weights_s`: its `tokens` attending to
        themselves and to `context` tokens already in the KV cache, gathered from it."""
        pairs = tokens * context + tokens * (tokens + 1) / 2
        return self.prefill_attn_s * pairs + self.prefill_ctx_s * context

    def prefill_s(self, tokens: int, context: int) -> float:
        """A step's prefill work when it holds one chunk and nothing else."""
        return self.weights_s(tokens) + self.chunk_s(tokens, context)

    def prompt_s(self, tokens: int, chunk: int | None = None, cached: int = 0) -> float:
        """Time to first token of a prompt alone on its worker: its `tokens` new tokens after
        `cached` ones in the KV cache, in chunks of at most `chunk` tokens (None: one), a step
        each."""
        step = chunk or tokens
        return self.prefill_seq_s + sum(
            self.step_s0 + self.prefill_s(min(step, tokens - done), cached + done)
            for done in range(0, tokens, step))

    def scaled(self, factor: float) -> Costs:
        """Every step term `factor` times as long (an engine running slower or faster)."""
        names = ("step_s0", "prefill_token_s", "prefill_attn_s", "prefill_ctx_s",
                 "prefill_seq_s", "decode_seq_s", "decode_ctx_s")
        return replace(self, rows_s=tuple((r, s * factor) for r, s in self.rows_s),
                       **{n: getattr(self, n) * factor for n in names})

    def decode_s(self, batch: int, context_sum: int) -> float:
        """What decoding sequences add to a step beyond their rows' `weights_s`."""
        return self.decode_seq_s * batch + self.decode_ctx_s * context_sum

    def transfer_s(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / (self.network_gbps * 1e9)

    def restore_s(self, tier: str, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / (self.restore_gbps.get(tier, 10.0) * 1e9)

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Costs:
        if data.get("version") != VERSION:
            raise ValueError(f"calibration version {data.get('version')!r}, expected {VERSION}")
        fields = {k: v for k, v in data.items() if k != "version"}
        fields["rows_s"] = tuple((int(r), float(s)) for r, s in fields.get("rows_s", ()))
        return cls(**fields)


# The 40M demo Llama on the 2-core EPYC of PERF_NOTES: ~2,800 prefill tok/s at 512 tokens,
# ~320 decode tok/s at batch 8, ~700 at batch 32; 8 layers x 2 x 4 KV heads x 64 x fp32.
DEFAULTS = Costs(step_s0=0.004, prefill_token_s=0.00030, prefill_attn_s=2.0e-9,
                 decode_seq_s=0.0008, decode_ctx_s=4.0e-8, kv_bytes_per_token=16384,
                 restore_gbps={"host": 8.0, "disk": 2.0}, network_gbps=1.0,
                 model="demo-small (PERF_NOTES figures)", source="defaults")


def default_path() -> Path:
    return paths.home() / "sim" / "calibration.json"


def save(costs: Costs, path: Path | None = None) -> Path:
    path = path or default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(costs.to_json(), indent=2) + "\n")
    tmp.replace(path)
    return path


def load(path: Path) -> Costs:
    """A calibration file; ValueError when it is unreadable or of another version."""
    try:
        return Costs.from_json(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"cannot read calibration {path}: {exc}") from None


def replace_network(costs: Costs, gbps: float) -> Costs:
    return replace(costs, network_gbps=gbps)
