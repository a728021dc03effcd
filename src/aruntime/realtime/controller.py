"""One loop's controller, as ros2_control's controller manager runs one each period: read the
newest fresh observation; command the planner's next action when a chunk is queued (the LLM
engine's, at its lower rate), else the policy network's for that observation; or, with no fresh
input or in the watchdog's fallback mode, the declared fallback — in the same period. The
command goes to `write`. Its state (the command, the policy's recurrent state) is a set of
arrays the loop snapshots and restores in place (snapshot.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aruntime.realtime.action_chunks import ActionChunks
from aruntime.realtime.fallback import Fallback
from aruntime.realtime.fresh import FreshInput
from aruntime.realtime.loop import Tick
from aruntime.realtime.policy_net import StaticPolicy
from aruntime.realtime.watchdog import Mode


class Controller:
    def __init__(self, observation: FreshInput[np.ndarray], policy: StaticPolicy,
                 fallback: Fallback, write: Callable[[np.ndarray], None],
                 chunks: ActionChunks[np.ndarray] | None = None) -> None:
        self.observation, self.policy, self.fallback = observation, policy, fallback
        self.write, self.chunks = write, chunks
        self.command = np.zeros(policy.action.shape[0], dtype=np.float32)
        self._obs = policy.obs.numpy()  # the policy's own input buffer, written in place
        self._action = policy.action.numpy()
        self.fallbacks = 0  # periods that sent the fallback's command
        self.planned = 0  # periods that sent a planner's action

    def step(self, tick: Tick) -> bool:
        """The loop's step: whether its input was fresh (the watchdog's stale report)."""
        seen = self.observation.get(tick.started_ns)
        if seen is None or tick.mode is Mode.FALLBACK:
            self.fallback.command(self.command)
            self.fallbacks += 1
        else:
            action = self.chunks.pop() if self.chunks is not None else None
            if action is not None:
                np.copyto(self.command, action)
                self.planned += 1
            else:
                np.copyto(self._obs, seen.value)
                self.policy.step()
                np.copyto(self.command, self._action)
        self.write(self.command)
        return seen is not None

    def state(self) -> dict[str, np.ndarray]:
        """The arrays that are this controller's state, by name (the policy's, shared)."""
        return {"command": self.command, "hidden": self.policy.hidden.numpy()}
