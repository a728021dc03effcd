"""The rollout controller: it starts rollouts, assigns each request to an arm, collects what
each version's requests showed, and on every `tick()` measures, judges and moves the rollout —
to its next step, to a person's approval, to promotion, or (on a failed analysis, or a person's
word) back to stable with its reasons. Every move is saved before it takes effect, so a
controller killed at any point resumes at the step it was at, with the same assignment.

Promotion waits for a person's approval bound to the rollout's digest unless the rollout does
not require one *and* the signed policy in force permits unattended promotion for its kind
(`unattended(kind)`); such a promotion is recorded as unattended.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aruntime.adapt import analysis as an
from aruntime.adapt.artifact import Kind, ReleaseError, UnknownRelease
from aruntime.adapt.assignment import on_candidate
from aruntime.adapt.registry import CANARY, STABLE, Registry
from aruntime.adapt.rollout import ACTIVE, Rollout, RolloutStore, StaleRollout, Status
from aruntime.adapt.samples import Sample
from aruntime.timeutil import parse_rfc3339, sortable_rfc3339, utc_now

APPROVAL_KINDS = (Kind.MODEL, Kind.POLICY)  # require approval by default


@dataclass(frozen=True)
class Assignment:
    name: str
    version: str  # what answers the user
    rollout_id: str | None = None
    shadow: str | None = None  # a version to mirror the request to (its answer discarded)


@dataclass
class _Window:
    candidate: list[Sample] = field(default_factory=list)
    stable: list[Sample] = field(default_factory=list)


class RolloutController:
    def __init__(self, registry: Registry, store: RolloutStore, *,
                 clock: Callable[[], datetime] = utc_now,
                 unattended: Callable[[Kind], bool] = lambda kind: False,
                 answer: Callable[[str, str, list[dict[str, Any]]], str] | None = None) -> None:
        self.registry, self.store, self.clock = registry, store, clock
        # (name, version, messages) -> the answer's text: offline evaluation sets run through it
        self.unattended, self.answer = unattended, answer
        self._lock = threading.RLock()
        self._active: dict[str, Rollout] = {}  # by name
        self._windows: dict[str, _Window] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read the active rollouts back (another process may have started or moved one)."""
        with self._lock:
            self._active = {r.name: r for r in self.store.all(active_only=True)}

    # -- starting and routing

    def start(self, name: str, to: str, steps: list[int], *, by: str, pause_s: float = 0.0,
              analysis: an.Analysis | None = None, shadow: bool = False,
              require_approval: bool = False) -> Rollout:
        if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(steps):
            raise ReleaseError("steps are rising percentages in 1-100, e.g. 10,25,50,100")
        with self._lock:
            self.refresh()
            if name in self._active:
                raise ReleaseError(f"{name} already has a rollout in progress "
                                   f"({self._active[name].rollout_id})")
            stable_version = self.registry.aliases(name).get(STABLE)
            if stable_version is None:
                raise ReleaseError(f"{name} has no stable version to roll out from "
                                   f"(`aruntime release alias {name} VERSION stable`)")
            stable = self.registry.get(name, stable_version)
            candidate = self.registry.get(name, to)
            if candidate.version == stable.version:
                raise ReleaseError(f"{candidate.version[:19]} is {name}'s stable version")
            self.registry.verify(stable)
            self.registry.verify(candidate)
            now = sortable_rfc3339(self.clock())
            rollout = Rollout(
                f"ro-{secrets.token_hex(6)}", name, candidate.kind.value, stable.version,
                candidate.version, list(steps), float(pause_s),
                (analysis or an.Analysis.default(candidate.kind)).to_json(), shadow,
                require_approval or candidate.kind in APPROVAL_KINDS, by, now,
                step_started_at=now)
            self.store.create(rollout, {"type": "started", "by": by})
            self.registry.move_alias(name, candidate.version, CANARY, by,
                                     f"rollout {rollout.rollout_id}")
            self._traffic(rollout, "started")
            self._active[name] = rollout
            return rollout

    def active(self, name: str) -> Rollout | None:
        """`name`'s rollout in progress, as of the last tick (or start, or refresh)."""
        with self._lock:
            return self._active.get(name)

    def assign(self, name: str, tenant: str, session: str) -> Assignment:
        r = self.active(name)
        if r is None:
            version = self.registry.aliases(name).get(STABLE)
            if version is None:
                raise ReleaseError(f"{name} has no stable version")
            return Assignment(name, version)
        chosen = on_candidate(r.rollout_id, tenant, session, r.weight)
        if r.shadow:
            return Assignment(name, r.stable, r.rollout_id, r.candidate if chosen else None)
        return Assignment(name, r.candidate if chosen else r.stable, r.rollout_id)

    def record(self, rollout_id: str, sample: Sample) -> None:
        with self._lock:
            r = next((r for r in self._active.values() if r.rollout_id == rollout_id), None)
            if r is None:
                return
            window = self._windows.setdefault(rollout_id, _Window())
            (window.candidate if sample.version == r.candidate else window.stable).append(sample)

    # -- a person's decisions

    def approve(self, rollout_id: str, approves: str, by: str) -> Rollout:
        def act(r: Rollout) -> dict[str, object]:
            if r.status is not Status.AWAITING_APPROVAL:
                raise ReleaseError(f"rollout {rollout_id} is {r.status.value}, not awaiting "
                                   "approval")
            if approves != r.digest:
                raise ReleaseError(f"the approval is for {approves}, but rollout {rollout_id} "
                                   f"is {r.digest}; refused")
            self._promote(r, by)
            return {"type": "approved", "by": by, "approves": approves}
        return self._change(rollout_id, act)

    def abort(self, rollout_id: str, by: str, reason: str = "aborted by a person") -> Rollout:
        def act(r: Rollout) -> dict[str, object]:
            self._abort(r, [reason])
            return {"type": "aborted", "by": by, "reasons": [reason]}
        return self._change(rollout_id, act)

    def promote(self, rollout_id: str, by: str) -> Rollout:
        """Skip the remaining steps; the approval rule still holds."""
        def act(r: Rollout) -> dict[str, object]:
            r.step = len(r.steps) - 1
            if r.require_approval:
                r.status = Status.AWAITING_APPROVAL
            else:
                self._promote(r, by)
            return {"type": "promote-asked", "by": by, "status": r.status.value}
        return self._change(rollout_id, act)

    def _change(self, rollout_id: str, act: Callable[[Rollout], dict[str, object]]) -> Rollout:
        with self._lock:
            for _ in range(5):
                r = self.store.get(rollout_id)
                if r is None:
                    raise UnknownRelease(f"no rollout {rollout_id}")
                if r.status not in ACTIVE:
                    raise ReleaseError(f"rollout {rollout_id} is {r.status.value} already")
                event = act(r)
                try:
                    self.store.save(r, event)
                except StaleRollout:
                    continue
                self._after(r)
                return r
            raise ReleaseError(f"rollout {rollout_id} keeps changing under this write")

    # -- the loop

    def tick(self) -> None:
        """Measure, judge and move every active rollout once."""
        with self._lock:
            self.refresh()
            for r in list(self._active.values()):
                if r.status is Status.PROGRESSING:
                    try:
                        self._progress(r)
                    except StaleRollout:
                        continue  # another writer moved it: the next tick reads it back

    def _progress(self, r: Rollout) -> None:
        analysis = an.Analysis.from_json(r.analysis)
        taken = self._measure(r, analysis)
        if taken:
            r.measurements.extend({**m.to_json(), "step": r.step} for m in taken)
        phase, reasons = analysis.verdict([_measurement(m) for m in r.measurements])
        if phase in (an.Phase.FAILED, an.Phase.ERROR):
            self._abort(r, reasons)
            event: dict[str, object] = {"type": "aborted", "by": "analysis", "reasons": reasons}
        elif phase is an.Phase.INCONCLUSIVE:
            r.status, r.reasons = Status.PAUSED, reasons
            event = {"type": "paused", "reasons": reasons}
        elif self._step_done(r, analysis):
            event = self._next_step(r)
        elif taken:
            event = {"type": "measured", "measurements": [m.to_json() for m in taken]}
        else:
            return
        self.store.save(r, event)
        self._after(r)

    def _measure(self, r: Rollout, analysis: an.Analysis) -> list[an.Measurement]:
        live = [m for m in analysis.metrics if m.live]
        window = self._windows.setdefault(r.rollout_id, _Window())
        taken = []
        if live and len(window.candidate) >= max(m.window for m in live):
            taken = [an.measure_live(m, window.candidate, window.stable) for m in live]
            self._windows[r.rollout_id] = _Window()
        offline = [m for m in analysis.metrics if not m.live]
        if offline and r.offline_step < r.step and self._paused_enough(r):
            if self.answer is None:
                taken += [an.Measurement(m.name, an.Phase.ERROR, message="no evaluator here",
                                         dry_run=m.dry_run) for m in offline]
            else:
                answer, name = self.answer, r.name
                taken += [an.measure_offline(m, lambda v, msgs: answer(name, v, msgs),
                                             r.candidate, r.stable) for m in offline]
            r.offline_step = r.step
        return taken

    def _paused_enough(self, r: Rollout) -> bool:
        started = parse_rfc3339(r.step_started_at)
        return (self.clock() - started).total_seconds() >= r.pause_s

    def _step_done(self, r: Rollout, analysis: an.Analysis) -> bool:
        """The pause is over and every deciding metric succeeded at least once this step."""
        if not self._paused_enough(r):
            return False
        this_step = [m for m in r.measurements if m.get("step", r.step) == r.step]
        return all(any(m["metric"] == metric.name and m["phase"] == an.Phase.SUCCESSFUL
                       for m in this_step)
                   for metric in analysis.metrics if not metric.dry_run)

    def _next_step(self, r: Rollout) -> dict[str, object]:
        if r.step + 1 < len(r.steps):
            r.step += 1
            r.step_started_at = sortable_rfc3339(self.clock())
            return {"type": "step", "step": r.step, "weight": r.weight}
        self._finish(r, "controller")
        return {"type": "finished-steps", "status": r.status.value,
                "unattended": r.status is Status.PROMOTED}

    def _finish(self, r: Rollout, by: str) -> None:
        if r.require_approval or not self.unattended(Kind(r.kind)):
            r.status = Status.AWAITING_APPROVAL
        else:
            self._promote(r, f"{by} (unattended: the signed policy permits it)")

    def _promote(self, r: Rollout, by: str) -> None:
        r.status = Status.PROMOTED
        self.registry.move_alias(r.name, r.candidate, STABLE, by, f"rollout {r.rollout_id}")

    def _abort(self, r: Rollout, reasons: list[str]) -> None:
        r.status, r.reasons = Status.ABORTED, list(reasons)

    def _after(self, r: Rollout) -> None:
        """What a saved change does: traffic follows the state; finished rollouts leave."""
        self._traffic(r, r.status.value)
        if r.status in ACTIVE:
            self._active[r.name] = r
        else:
            self._active.pop(r.name, None)
            self._windows.pop(r.rollout_id, None)

    def move_alias(self, name: str, ref: str, alias: str, by: str) -> str:
        """A person moves an alias; moving `stable` sends all of `name`'s traffic there (not
        while a rollout owns the traffic)."""
        with self._lock:
            self.refresh()
            if alias == STABLE and name in self._active:
                raise ReleaseError(f"{name}'s traffic belongs to rollout "
                                   f"{self._active[name].rollout_id}: abort or promote it")
            release = self.registry.move_alias(name, ref, alias, by)
            if alias == STABLE:
                self.registry.set_traffic(name, {release.version: 100},
                                          f"alias stable moved by {by}")
            return release.version

    def _traffic(self, r: Rollout, cause: str) -> None:
        if r.status is Status.PROMOTED:
            weights: dict[str, float] = {r.candidate: 100}
        elif r.shadow or r.weight == 0:
            weights = {r.stable: 100}
        else:
            weights = {r.stable: 100 - r.weight, r.candidate: r.weight}
            weights = {v: w for v, w in weights.items() if w}
        if self.registry.traffic_now(r.name) != weights:
            self.registry.set_traffic(r.name, weights, f"rollout {r.rollout_id}: {cause} "
                                      f"(step {r.step + 1} of {len(r.steps)})")

    def status(self, rollout_id: str) -> dict[str, object]:
        r = self.store.get(rollout_id)
        if r is None:
            raise UnknownRelease(f"no rollout {rollout_id}")
        return {**r.to_json(), "events": self.store.events(rollout_id)}


def _measurement(raw: dict[str, object]) -> an.Measurement:
    return an.Measurement(str(raw["metric"]), an.Phase(str(raw["phase"])),
                          message=str(raw.get("message", "")), dry_run=bool(raw.get("dry_run")))
