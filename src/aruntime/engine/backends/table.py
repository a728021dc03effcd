"""The cost table `aruntime backends calibrate` writes: per phase and bucket, the seconds one
step's dense work took on each backend that passed the gate, with the hardware, the versions
and the model revision it was measured on. `choose` reads it: the cheapest backend for the
step's phase and bucket; eager for a bucket the table does not hold."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aruntime.engine.backends.registry import EAGER
from aruntime.fsutil import write_atomic
from aruntime.jsonfile import read_json_object

PHASES = ("prefill", "decode")


def bucket(rows: int) -> int:
    """The power of two at or above `rows`: steps are costed by the bucket they fall in."""
    return 1 << max(0, rows - 1).bit_length()


def table_path(backends_dir: Path, revision: str, dtype: str) -> Path:
    return backends_dir / f"table-{revision.removeprefix('sha256:')[:16]}-{dtype}.json"


@dataclass
class CostTable:
    model_revision: str
    dtype: str
    hardware: str
    versions: dict[str, str]
    # "phase/rows" (or "decode/rows/context": a decode step's cost grows with the context its
    # rows hold, and a whole-step graph's gather with it) -> backend -> seconds
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # backend -> why the gate refused it

    def choose(self, phase: str, rows: int, allowed: set[str] | None = None,
               context: int | None = None) -> str:
        costs = self.seconds.get(self.key(phase, rows, context), {})
        usable = {b: s for b, s in costs.items() if allowed is None or b in allowed}
        return min(usable, key=lambda b: usable[b]) if usable else EAGER

    def key(self, phase: str, rows: int, context: int | None) -> str:
        """The entry a step is costed by: its rows' bucket and, where the table measured
        contexts, the smallest measured at or above its own (else the largest)."""
        plain = f"{phase}/{bucket(rows)}"
        measured = sorted(int(k.rsplit("/", 1)[1]) for k in self.seconds
                          if k.count("/") == 2 and k.rsplit("/", 1)[0] == plain)
        if context is None or not measured:
            return plain
        return f"{plain}/{next((c for c in measured if c >= context), measured[-1])}"

    def winners(self) -> set[str]:
        """The backends that are cheapest somewhere."""
        return {min(costs, key=lambda b: costs[b]) for costs in self.seconds.values() if costs}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(asdict(self), indent=1, sort_keys=True).encode())

    @classmethod
    def load(cls, path: Path) -> CostTable:
        raw: dict[str, Any] = read_json_object(path)
        return cls(**raw)
