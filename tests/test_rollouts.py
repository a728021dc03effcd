"""The rollout controller on a real SQLite journal, driven by the samples live traffic would
give it and a clock the test moves: a bad canary aborts within two analysis windows and all
traffic goes back to stable; a good one steps through and is promoted only on an approval of
its own digest; dry-run metrics are recorded and never decide; `served --at` is right at every
instant across three rollouts; a new controller over the same journal resumes the same step
with the same assignment."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from aruntime.adapt.analysis import Analysis
from aruntime.adapt.artifact import Kind, ReleaseError
from aruntime.adapt.controller import RolloutController
from aruntime.adapt.registry import Registry
from aruntime.adapt.rollout import RolloutStore, Status
from aruntime.adapt.samples import Sample
from aruntime.durable.journal import SqliteJournal
from aruntime.evidence.signing import DeploymentKey
from aruntime.timeutil import utc_now


class Clock:
    """The controller's wall clock, moved by the test (its pauses are wall time)."""

    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Setup:
    def __init__(self, root: Path) -> None:
        self.root, self.key = root, DeploymentKey.generate()
        self.journal = SqliteJournal(root / "runs.db")
        self.clock = Clock()
        self.registry = Registry(self.journal, root / "releases", self.key)
        self.versions = []
        for i, text in enumerate(("You are terse.", "You are kind.", "You are exact.",
                                  "You are new.")):
            path = root / f"p{i}.txt"
            path.write_text(text)
            self.versions.append(self.registry.add(Kind.PROMPT, "support", path, "alice").version)
        self.controller = self.fresh()
        self.controller.move_alias("support", self.versions[0], "stable", "alice")

    def fresh(self) -> RolloutController:
        return RolloutController(self.registry, RolloutStore(self.journal, self.key),
                                 clock=self.clock)

    def traffic(self, rollout_id: str, candidate_ok: bool, n: int = 20) -> None:
        """n requests to each arm (as many as the analysis window needs)."""
        r = self.controller.store.get(rollout_id)
        assert r is not None
        for _ in range(n):
            self.controller.record(rollout_id, Sample(r.candidate, candidate_ok, 0.01, 0.002))
            self.controller.record(rollout_id, Sample(r.stable, True, 0.01, 0.002))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_a_bad_canary_aborts_within_two_windows_and_traffic_returns_to_stable(
        setup: Setup) -> None:
    c, v = setup.controller, setup.versions
    r = c.start("support", v[1], [10, 50, 100], by="alice")
    assert c.assign("support", "t1", "s-canary-probe").rollout_id == r.rollout_id
    windows = 0
    while windows < 2 and c.store.get(r.rollout_id).status is not Status.ABORTED:  # type: ignore[union-attr]
        setup.traffic(r.rollout_id, candidate_ok=False)
        c.tick()
        windows += 1
    done = c.store.get(r.rollout_id)
    assert done is not None and done.status is Status.ABORTED and windows <= 2
    assert "error-rate: Failed" in done.reasons[0]
    assert setup.registry.aliases("support")["stable"] == v[0]  # never promoted
    assert {c.assign("support", "t1", f"s{i}").version for i in range(200)} == {v[0]}
    assert setup.registry.traffic_now("support") == {v[0]: 100}


def test_a_good_canary_is_promoted_only_on_an_approval_of_its_digest(setup: Setup) -> None:
    c, v = setup.controller, setup.versions
    r = c.start("support", v[1], [10, 50, 100], by="alice", pause_s=5,
                require_approval=True)
    seen = []
    for _ in range(3):
        setup.traffic(r.rollout_id, candidate_ok=True)
        c.tick()  # measured; the pause is not over
        setup.clock.advance(5)
        c.tick()
        now = c.store.get(r.rollout_id)
        assert now is not None
        seen.append((now.status, now.weight))
    assert seen == [(Status.PROGRESSING, 50), (Status.PROGRESSING, 100),
                    (Status.AWAITING_APPROVAL, 100)]
    with pytest.raises(ReleaseError, match="refused"):
        c.approve(r.rollout_id, "sha256:" + "0" * 64, "bob")
    assert setup.registry.aliases("support")["stable"] == v[0]
    done = c.approve(r.rollout_id, r.digest, "bob")
    assert done.status is Status.PROMOTED
    assert setup.registry.aliases("support")["stable"] == v[1]
    events = [e["type"] for e in c.store.events(r.rollout_id)]
    assert events[0] == "started" and events[-1] == "approved" and "step" in events
    assert not any("unattended" in m["by"] for m in setup.registry.moves("support"))


def test_without_a_signed_policy_nothing_is_promoted_unattended(setup: Setup) -> None:
    c, v = setup.controller, setup.versions
    r = c.start("support", v[1], [100], by="alice")
    setup.traffic(r.rollout_id, candidate_ok=True)
    c.tick()
    assert c.store.get(r.rollout_id).status is Status.AWAITING_APPROVAL  # type: ignore[union-attr]
    c.abort(r.rollout_id, "alice")
    permitted = RolloutController(setup.registry, c.store, clock=setup.clock,
                                  unattended=lambda kind: kind is Kind.PROMPT)
    r2 = permitted.start("support", v[2], [100], by="alice")
    setup.controller = permitted
    setup.traffic(r2.rollout_id, candidate_ok=True)
    permitted.tick()
    assert permitted.store.get(r2.rollout_id).status is Status.PROMOTED  # type: ignore[union-attr]
    assert "unattended" in setup.registry.moves("support")[-1]["by"]


def test_dry_run_metrics_are_recorded_and_never_decide(setup: Setup) -> None:
    c, v = setup.controller, setup.versions
    analysis = Analysis.from_json({"metrics": [
        {"name": "errors", "measure": "error_rate", "max_above_stable": 0.05, "window": 20},
        {"name": "ttft-impossible", "measure": "ttft_p95", "max": 0.0, "dry_run": True}]})
    r = c.start("support", v[1], [50, 100], by="alice", analysis=analysis)
    setup.traffic(r.rollout_id, candidate_ok=True)
    c.tick()
    now = c.store.get(r.rollout_id)
    assert now is not None and now.status is Status.PROGRESSING and now.weight == 100
    dry = [m for m in now.measurements if m["metric"] == "ttft-impossible"]
    assert dry and all(m["phase"] == "Failed" and m["dry_run"] for m in dry)


def test_no_stable_baseline_is_inconclusive_and_pauses(setup: Setup) -> None:
    c, v = setup.controller, setup.versions
    r = c.start("support", v[1], [50, 100], by="alice")
    for _ in range(20):
        c.record(r.rollout_id, Sample(v[1], True))
    c.tick()
    now = c.store.get(r.rollout_id)
    assert now is not None and now.status is Status.PAUSED
    assert "Inconclusive" in now.reasons[0]
    assert c.promote(r.rollout_id, "bob").status is Status.PROMOTED  # a person decides


def test_served_is_right_at_every_instant_across_three_rollouts(setup: Setup) -> None:
    c, v, reg = setup.controller, setup.versions, setup.registry
    marks: list[tuple[datetime, dict[str, float]]] = []

    def mark() -> None:
        marks.append((utc_now(), dict(reg.traffic_now("support") or {})))

    mark()
    r1 = c.start("support", v[1], [25, 100], by="alice")
    mark()
    for _ in range(2):  # step 1, then step 2 done: awaiting approval
        setup.traffic(r1.rollout_id, candidate_ok=True)
        c.tick()
    mark()
    c.approve(r1.rollout_id, r1.digest, "bob")  # v1 stable
    mark()
    r2 = c.start("support", v[2], [50, 100], by="alice")
    mark()
    setup.traffic(r2.rollout_id, candidate_ok=False)
    c.tick()  # aborted
    mark()
    r3 = c.start("support", v[3], [100], by="alice")
    mark()
    setup.traffic(r3.rollout_id, candidate_ok=True)
    c.tick()
    c.approve(r3.rollout_id, r3.digest, "bob")
    mark()
    expected = [{v[0]: 100}, {v[0]: 75, v[1]: 25}, {v[1]: 100}, {v[1]: 100},
                {v[1]: 50, v[2]: 50}, {v[1]: 100}, {v[3]: 100}, {v[3]: 100}]
    assert [m[1] for m in marks] == expected
    assert c.store.get(r2.rollout_id).status is Status.ABORTED  # type: ignore[union-attr]
    for at, weights in marks:
        got = reg.served("support", at)
        assert got is not None and got["weights"] == weights, (at, got)


def test_a_new_controller_resumes_the_same_step_with_the_same_assignment(
        setup: Setup) -> None:
    c, v = setup.controller, setup.versions
    r = c.start("support", v[1], [10, 50, 100], by="alice")
    setup.traffic(r.rollout_id, candidate_ok=True)
    c.tick()
    before = {f"s{i}": c.assign("support", "t1", f"s{i}").version for i in range(300)}
    assert c.store.get(r.rollout_id).weight == 50  # type: ignore[union-attr]
    again = setup.fresh()  # what a restarted process builds
    assert again.store.get(r.rollout_id).weight == 50  # type: ignore[union-attr]
    assert {s: again.assign("support", "t1", s).version for s in before} == before
    share = sum(ver == v[1] for ver in before.values()) / len(before)
    assert 0.4 < share < 0.6
    with pytest.raises(ReleaseError, match="already has a rollout"):
        again.start("support", v[2], [100], by="alice")
