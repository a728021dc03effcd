"""What a loop commands when it cannot trust its inputs or its timing: the declared fallback
the watchdog switches to (and a step with no fresh input applies at once). Each writes this
period's command from the last one sent, in place: hold it, decelerate it to a stop by at most
a set step a period (a moving arm is not stopped dead), or send a named safe action."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Fallback(ABC):
    name: str

    @abstractmethod
    def command(self, last: np.ndarray) -> None:
        """Overwrite `last` (the command sent last period) with this period's."""


class Hold(Fallback):
    name = "hold"

    def command(self, last: np.ndarray) -> None:
        pass  # the last command stands


class DecelerateToStop(Fallback):
    name = "decelerate"

    def __init__(self, step: float) -> None:
        if step <= 0:
            raise ValueError("a deceleration step must be positive")
        self.step = step

    def command(self, last: np.ndarray) -> None:
        last -= np.clip(last, -self.step, self.step)


class SafeAction(Fallback):
    def __init__(self, name: str, action: np.ndarray) -> None:
        self.name = name
        self.action = np.array(action, dtype=np.float32)

    def command(self, last: np.ndarray) -> None:
        if last.shape != self.action.shape:
            raise ValueError(f"safe action {self.name!r} has shape {self.action.shape}, "
                             f"the command {last.shape}")
        np.copyto(last, self.action)
