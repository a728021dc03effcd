"""Real-time loops, on an injected clock (nothing here is timed): a stale input is never used
(property test over arrival and age patterns); a loop on absolute deadlines counts lateness,
misses and overruns; a miss, a stale input or an overrun switches to the fallback within one
period and nominal returns only after the conditions held for the declared time; a lease not
renewed expires; a snapshot restores a state exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aruntime.realtime.clock import SimulatedClock
from aruntime.realtime.fresh import FreshInput
from aruntime.realtime.loop import Loop, OnMiss, Tick
from aruntime.realtime.snapshot import Snapshot
from aruntime.realtime.watchdog import Mode, Reason, Watchdog

MS = 1_000_000
MAX_AGE = 5 * MS

events = st.lists(st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 40 * MS),
                            st.integers(0, 12 * MS)), max_size=60)


@given(events)
def test_a_stale_input_is_never_used(script: list[tuple[str, int, int]]) -> None:
    """Puts stamped anywhere (late, out of order, ahead of the reader), reads at a rising now:
    a read returns the newest stamp put, only when it is 0 to MAX_AGE old; else nothing."""
    fresh: FreshInput[int] = FreshInput(MAX_AGE)
    now, newest = 0, None
    for kind, stamp, step in script:
        if kind == "put":
            fresh.put(stamp, stamp)
            newest = stamp if newest is None else max(newest, stamp)
            continue
        now += step
        got = fresh.get(now)
        usable = newest is not None and 0 <= now - newest <= MAX_AGE
        assert (got is not None) == usable
        if got is not None:
            assert got.at_ns == newest and got.value == newest and now - got.at_ns <= MAX_AGE


def stepping(clock: SimulatedClock, work_ns: int, stalls: dict[int, int] | None = None,
             stale_at: set[int] | None = None, seen: list[Tick] | None = None):  # type: ignore[no-untyped-def]
    """A step that takes `work_ns` (more at the stalled periods), fresh except at `stale_at`."""
    def step(tick: Tick) -> bool:
        if seen is not None:
            seen.append(tick)
        clock.advance(work_ns + (stalls or {}).get(tick.index, 0))
        return tick.index not in (stale_at or set())
    return step


def test_a_loop_counts_lateness_misses_and_overruns_on_absolute_deadlines() -> None:
    clock = SimulatedClock()
    loop = Loop(MS, clock=clock)
    seen: list[Tick] = []
    loop.run(stepping(clock, MS // 4, stalls={3: 2 * MS + MS // 2}, seen=seen), ticks=10)
    # step 3 ends at 5.75 ms: period 4 passed with no step (missed), 5 runs late, in its period
    assert [t.index for t in seen] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert loop.misses == 1 and loop.overruns == 1 and loop.steps == 9
    assert all(t.due_ns == t.index * MS for t in seen)  # never drifting by a step's own time
    assert seen[4].lateness_ns == 3 * MS // 4  # in the period it ran in
    summary = loop.lateness.summary_us()  # the wake-up, after the 4 ms it waited for
    assert summary["p50"] == 0.0 and summary["max"] == 1750.0


def test_catch_up_runs_every_missed_period() -> None:
    clock = SimulatedClock()
    loop = Loop(MS, clock=clock, on_miss=OnMiss.CATCH_UP)
    seen: list[Tick] = []
    loop.run(stepping(clock, MS // 4, stalls={2: 3 * MS}, seen=seen), ticks=8)
    assert [t.index for t in seen] == list(range(8)) and loop.misses == 0


@pytest.mark.parametrize("fault, reason", [
    ({"stalls": {4: 2 * MS}}, Reason.MISSED),
    ({"stale_at": {4}}, Reason.STALE),
    ({"stalls": {4: MS // 2}}, Reason.OVERRUN),  # within the deadline, past the budget
])
def test_a_fault_switches_to_fallback_within_one_period_and_recovers_as_declared(
        fault: dict[str, object], reason: Reason) -> None:
    clock = SimulatedClock()
    dog = Watchdog(lease_ns=3 * MS, recover_ns=5 * MS, budget_ns=MS // 2)
    loop = Loop(MS, deadline_ns=2 * MS, clock=clock, watchdog=dog)
    seen: list[Tick] = []
    loop.run(stepping(clock, MS // 4, seen=seen, **fault), ticks=20)  # type: ignore[arg-type]
    faulty = next(i for i, t in enumerate(seen) if t.index == 4)
    assert all(t.mode is Mode.NOMINAL for t in seen[:faulty + 1])
    assert seen[faulty + 1].mode is Mode.FALLBACK  # the very next step
    to_fallback, to_nominal = dog.switches
    assert to_fallback.to is Mode.FALLBACK and reason in to_fallback.reasons
    # nominal again once the conditions held for 5 ms, counted from the first good report
    held = to_nominal.at_ns - dog.faults[-1].at_ns
    assert to_nominal.to is Mode.NOMINAL and 5 * MS <= held <= 6 * MS  # the next good report on
    back = next(i for i, t in enumerate(seen) if i > faulty and t.mode is Mode.NOMINAL)
    assert seen[back - 1].started_ns < to_nominal.at_ns <= seen[back].started_ns


def test_a_lease_not_renewed_expires() -> None:
    dog = Watchdog(lease_ns=3 * MS, recover_ns=MS, budget_ns=MS)
    assert not dog.expired(10 * MS)  # never started: nothing to expire
    dog.report(10 * MS)
    assert not dog.expired(13 * MS) and dog.expired(13 * MS + 1)


def test_a_snapshot_restores_the_state_exactly_and_refuses_another_shape() -> None:
    rng = np.random.default_rng(0)
    state = {"controller": rng.standard_normal(64 * 1024),  # 512 KiB of float64
             "queue": rng.integers(0, 255, 512 * 1024, dtype=np.uint8),
             "hidden": rng.standard_normal((4, 256)).astype(np.float32)}
    before = {k: v.copy() for k, v in state.items()}
    snap = Snapshot(state)
    assert snap.nbytes >= 1 << 20
    with pytest.raises(ValueError, match="nothing saved"):
        snap.restore(state)
    snap.save(state)
    for a in state.values():
        a[...] = 7  # perturbed in place, as a diverging run would
    arrays = {k: id(v) for k, v in state.items()}
    snap.restore(state)
    assert all(np.array_equal(state[k], before[k]) for k in state)
    assert {k: id(v) for k, v in state.items()} == arrays  # into the same memory
    with pytest.raises(ValueError, match="hidden"):
        snap.save({**state, "hidden": np.zeros((4, 255), np.float32)})


def test_the_real_time_setup_reports_each_setting_applied_or_refused() -> None:
    """In a process of its own: SCHED_FIFO and mlockall stay with it."""
    code = ("import json, os; from aruntime.realtime.os_setup import apply; "
            "print(json.dumps([[s.name, s.applied, s.detail] "
            "for s in apply(priority=10, cpus=[0])]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    settings = {name: (applied, detail) for name, applied, detail in json.loads(done.stdout)}
    assert list(settings) == ["sched_fifo", "affinity", "mlockall", "gc"]
    assert settings["affinity"] == (True, "cpus [0]") and settings["gc"][0] is True
    for name in ("sched_fifo", "mlockall"):  # granted here or not, it says which and why
        applied, detail = settings[name]
        assert applied or detail, name


def test_the_policy_network_steps_in_its_own_buffers_and_equals_the_plain_step() -> None:
    import torch

    from aruntime.realtime.policy_net import StaticPolicy

    policy = StaticPolicy(obs_dim=12, hidden=32, act_dim=4)
    buffers = (id(policy.action), policy.action.data_ptr(), policy.hidden.data_ptr())
    gen = torch.Generator().manual_seed(1)
    hidden = policy.hidden.clone()
    for _ in range(50):
        obs = torch.randn(12, generator=gen)
        policy.obs.copy_(obs)
        action = policy.step()
        want, hidden = policy.reference(obs, hidden)
        assert torch.allclose(action, want, atol=1e-6) and torch.allclose(policy.hidden, hidden,
                                                                         atol=1e-6)
    assert (id(action), action.data_ptr(), policy.hidden.data_ptr()) == buffers  # no new tensor


def test_action_chunks_from_the_engine_are_consumed_and_refilled_under_threshold(
        tiny_model_dir: Path) -> None:
    from tiny_engine import config

    from aruntime.engine.llm_engine import LLMEngine
    from aruntime.engine.sampling import SamplingParams
    from aruntime.realtime.action_chunks import ActionChunks

    engine = LLMEngine(config(tiny_model_dir))
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    plans: list[list[int]] = []

    def plan() -> list[int]:  # the planner: a chunk of 8 actions from the model's tokens
        tokens = engine.generate([[5, 6, 7, 8 + len(plans)]], params)[0].new_token_ids
        plans.append([t % 10 for t in tokens])
        return plans[-1]

    chunks = ActionChunks(plan, threshold=3).start()
    try:
        assert chunks.wait_chunks(1, 60)
        first = [chunks.pop() for _ in range(5)]
        assert first == plans[0][:5]  # in order; 3 left: under threshold is below 3
        assert chunks.pop() == plans[0][5]  # now 2 left: the next chunk is asked for
        assert chunks.wait_chunks(2, 60) and chunks.queued() == 2 + 8
        rest = [chunks.pop() for _ in range(10)]
        assert rest == plans[0][6:] + plans[1] and chunks.empty == 0
    finally:
        chunks.stop()  # a chunk in flight lands before it returns
    while chunks.queued():
        chunks.pop()
    assert chunks.pop() is None and chunks.empty == 1  # an empty period gets no action
