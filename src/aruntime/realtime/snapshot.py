"""Exact snapshot and restore of a loop's state — controller state, queues, a policy's
recurrent state — as named arrays. The snapshot's buffers are allocated once, from a template,
so saving and restoring are copies into memory that already exists (no allocation inside a
period); a state whose names, shapes or dtypes differ from the template's is refused."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class Snapshot:
    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        self._buffers = {name: np.empty_like(a) for name, a in template.items()}
        self.saved = False

    def _check(self, state: Mapping[str, np.ndarray]) -> None:
        if state.keys() != self._buffers.keys():
            raise ValueError(f"the state holds {sorted(state)}, the snapshot "
                             f"{sorted(self._buffers)}")
        for name, a in state.items():
            b = self._buffers[name]
            if a.shape != b.shape or a.dtype != b.dtype:
                raise ValueError(f"{name}: {a.dtype}{list(a.shape)}, the snapshot holds "
                                 f"{b.dtype}{list(b.shape)}")

    def save(self, state: Mapping[str, np.ndarray]) -> None:
        self._check(state)
        for name, a in state.items():
            np.copyto(self._buffers[name], a)
        self.saved = True

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy the saved state back into `state`'s own arrays, in place."""
        if not self.saved:
            raise ValueError("nothing saved to restore")
        self._check(state)
        for name, a in state.items():
            np.copyto(a, self._buffers[name])

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())
