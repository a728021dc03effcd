"""The equivalence gate: before a compiled backend serves, each of its parts runs a fixed probe
set — seeded activations at several row counts, with the model's own weights of its first and
last layers — against eager; every output must lie within the tolerance recorded for the
precision. A backend that fails is refused with the part, the bucket and the largest
difference. (The engine then checks greedy tokens on whole prompts: engine/backends/parts.py.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aruntime.engine.backends.base import Compiled, as_tuple

# (absolute, relative to the largest eager magnitude) per precision
TOLERANCE = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (3e-2, 1e-2),
             torch.float16: (1e-2, 5e-3)}
PROBE_ROWS = (1, 3, 16, 64)


class GateRefused(RuntimeError):
    """A compiled part whose outputs are not eager's."""


@dataclass(frozen=True)
class Probe:
    part: str
    layer: int  # whose weights the inputs hold (-1: the head's)
    rows: int
    inputs: tuple[torch.Tensor, ...]


def check(backend: str, compiled: dict[str, Compiled], eager: dict[str, Compiled],
          probes: list[Probe], dtype: torch.dtype, layers: int = 1) -> float:
    """The largest difference seen over every probe; GateRefused at the first that is out of
    tolerance — the precision's, times the `layers` a probe runs through (a whole step's
    graph: each layer's rounding adds to the last's)."""
    atol, rtol = (t * layers for t in TOLERANCE[dtype])
    worst = 0.0
    for probe in probes:
        with torch.no_grad():
            want = eager[probe.part](probe.layer, *probe.inputs)
            got = as_tuple(compiled[probe.part](probe.layer, *probe.inputs))
        for w, g in zip(want, got, strict=True):
            if g.shape != w.shape:
                raise GateRefused(f"{backend}: part {probe.part}, bucket {probe.rows} rows: "
                                  f"shape {tuple(g.shape)}, eager's {tuple(w.shape)}")
            diff = float((g.float() - w.float()).abs().max())
            bound = atol + rtol * float(w.float().abs().max())
            worst = max(worst, diff)
            if not diff <= bound:  # NaN fails too
                raise GateRefused(f"{backend}: part {probe.part}, bucket {probe.rows} rows: "
                                  f"largest difference {diff:.3g} > {bound:.3g} "
                                  f"({dtype}, atol {atol:g}, rtol {rtol:g})")
    return worst
