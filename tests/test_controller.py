"""A loop's controller on a simulated clock: fresh observations drive the policy network, a
queued planner action wins over it, and with no fresh input — or in the watchdog's fallback —
the declared fallback commands in that same period (decelerating to a stop, holding, or a named
safe action) until the conditions held for the recovery time. Its state restores exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from aruntime.realtime.action_chunks import ActionChunks
from aruntime.realtime.clock import SimulatedClock
from aruntime.realtime.controller import Controller
from aruntime.realtime.fallback import DecelerateToStop, Hold, SafeAction
from aruntime.realtime.fresh import FreshInput
from aruntime.realtime.loop import Loop, Tick
from aruntime.realtime.policy_net import StaticPolicy
from aruntime.realtime.snapshot import Snapshot
from aruntime.realtime.watchdog import Mode, Watchdog

MS = 1_000_000


class Rig:
    """A controller on a 1 kHz loop; a sensor that publishes each period unless it is out."""

    def __init__(self, fallback: object, out: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.clock = SimulatedClock()
        self.sensor: FreshInput[np.ndarray] = FreshInput(max_age_ns=2 * MS)
        self.sent: list[np.ndarray] = []
        self.modes: list[Mode] = []
        self.policy = StaticPolicy(obs_dim=4, hidden=16, act_dim=2, seed=3)
        self.ctl = Controller(self.sensor, self.policy, fallback,  # type: ignore[arg-type]
                              write=lambda c: self.sent.append(c.copy()))
        self.dog = Watchdog(lease_ns=3 * MS, recover_ns=4 * MS, budget_ns=MS // 2)
        self.loop = Loop(MS, clock=self.clock, watchdog=self.dog)
        self.out = out

    def run(self, ticks: int) -> None:
        def step(tick: Tick) -> bool:
            if tick.index not in self.out:
                self.sensor.put(np.full(4, 0.1 * (tick.index % 7), np.float32), tick.started_ns)
            self.modes.append(tick.mode)
            return self.ctl.step(tick)

        self.loop.run(step, ticks=ticks)


def test_without_fresh_input_the_fallback_decelerates_to_a_stop_then_the_policy_returns() -> None:
    rig = Rig(DecelerateToStop(step=0.2), out=set(range(10, 20)))
    rig.run(30)
    magnitude = [float(np.abs(c).max()) for c in rig.sent]
    # ticks 10 and 11 still read the observation of tick 9 (2 ms old at most); 12 has none
    assert rig.modes[12] is Mode.NOMINAL and rig.modes[13] is Mode.FALLBACK
    stopping = magnitude[12:20]
    assert magnitude[11] > 0.4  # moving: stopping takes more than one period
    assert all(b <= a and a - b <= 0.2 + 1e-6 for a, b in itertools.pairwise(stopping))
    assert magnitude[12] == pytest.approx(max(0.0, magnitude[11] - 0.2), abs=1e-6)
    assert magnitude[19] == 0.0  # stopped, and stays stopped while the sensor is out
    # the sensor is back at 20; nominal after 4 ms of good reports, the policy commanding again
    back = next(i for i in range(20, 30) if rig.modes[i] is Mode.NOMINAL)
    assert 24 <= back <= 26 and rig.ctl.fallbacks == back - 12
    assert magnitude[back] > 0.0


def test_hold_and_a_named_safe_action() -> None:
    held = Rig(Hold(), out=set(range(5, 9)))
    held.run(9)
    assert np.array_equal(held.sent[7], held.sent[6]) and np.array_equal(held.sent[8], held.sent[6])
    park = np.array([0.0, -1.0], np.float32)
    safe = Rig(SafeAction("park", park), out={3, 4, 5, 6})
    safe.run(8)
    assert np.array_equal(safe.sent[5], park) and not np.array_equal(safe.sent[2], park)
    with pytest.raises(ValueError, match="park"):
        SafeAction("park", np.zeros(3)).command(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="positive"):
        DecelerateToStop(0)


def test_a_queued_planner_action_wins_over_the_policy() -> None:
    chunk = [np.array([0.5, 0.5], np.float32), np.array([0.25, 0.0], np.float32)]
    planned = iter([chunk])
    chunks: ActionChunks[np.ndarray] = ActionChunks(lambda: next(planned, []), threshold=0)
    chunks.start()
    try:
        assert chunks.wait_chunks(1, 30)
        rig = Rig(Hold())
        rig.ctl.chunks = chunks
        rig.run(3)
    finally:
        chunks.stop()
    assert [c.tolist() for c in rig.sent[:2]] == [[0.5, 0.5], [0.25, 0.0]]
    assert rig.ctl.planned == 2 and rig.sent[2].tolist() != [0.25, 0.0]  # then the policy


def test_the_controllers_state_restores_exactly() -> None:
    rig = Rig(Hold())
    rig.run(5)
    snap = Snapshot(rig.ctl.state())
    snap.save(rig.ctl.state())
    saved = {k: v.copy() for k, v in rig.ctl.state().items()}
    rig.run(7)  # perturb: the command and the recurrent state move on
    assert not np.array_equal(rig.ctl.state()["hidden"], saved["hidden"])
    snap.restore(rig.ctl.state())
    assert all(np.array_equal(rig.ctl.state()[k], v) for k, v in saved.items())
    assert rig.policy.hidden.numpy().tobytes() == saved["hidden"].tobytes()  # in place
