"""Analysis with Argo Rollouts' semantics. Each metric is measured again and again while a step
runs; a measurement is Successful, Failed, Inconclusive (nothing to judge by, e.g. no baseline)
or Error (it could not be taken). A metric fails the analysis when its Failed measurements pass
`failure_limit`, or its consecutive Errors pass `consecutive_error_limit`; passing
`inconclusive_limit` pauses the rollout for a person. `dry_run` metrics are measured and
recorded and never decide anything.

Live metrics (`error_rate`, `refusal_rate`, `ttft_pNN`, `tpot_pNN`) are read from the requests
each version answered since the last measurement, once the candidate has `window` of them;
offline ones (`exact_match`, `json_valid`, `score` by a `module:function`) run an evaluation set
through a version, once a step. Bounds: `max` / `min` on the candidate's value, `max_above_stable`
(candidate minus stable) and `max_ratio_to_stable`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from aruntime.adapt.artifact import Kind, ReleaseError
from aruntime.adapt.samples import Sample, statistic
from aruntime.jsonfile import read_json_object

LIVE = ("error_rate", "refusal_rate")
OFFLINE = ("exact_match", "json_valid", "score")
_BOUNDS = ("max", "min", "max_above_stable", "max_ratio_to_stable")


class Phase(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


@dataclass(frozen=True)
class Metric:
    name: str
    measure: str
    bounds: dict[str, float]
    window: int = 20  # candidate requests per live measurement
    failure_limit: int = 0
    inconclusive_limit: int = 0
    consecutive_error_limit: int = 4
    dry_run: bool = False
    eval_set: str | None = None  # offline: a JSONL file of {"messages": [...], "expected": …}
    scorer: str | None = None  # offline `score`: "module:function" (case, output) -> float

    @property
    def live(self) -> bool:
        return self.measure not in OFFLINE


@dataclass(frozen=True)
class Measurement:
    metric: str
    phase: Phase
    value: float | None = None
    baseline: float | None = None
    message: str = ""
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "phase": self.phase.value}


@dataclass(frozen=True)
class Analysis:
    metrics: tuple[Metric, ...] = field(default_factory=tuple)

    @classmethod
    def default(cls, kind: Kind | None = None) -> Analysis:
        """A step fails when the candidate's error rate is 5 points above stable's over a
        window of at least 20 of its requests; for a policy bundle, its refusal rate too (a
        candidate that refuses more of the same traffic is what its canary must catch; a
        deliberate tightening says so in its own analysis)."""
        metrics = [Metric("error-rate", "error_rate", {"max_above_stable": 0.05}, window=20)]
        if kind is Kind.POLICY:
            metrics.append(Metric("refusal-rate", "refusal_rate", {"max_above_stable": 0.05},
                                  window=20))
        return cls(tuple(metrics))

    @classmethod
    def from_json(cls, data: Any) -> Analysis:
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
            raise ReleaseError("an analysis is {\"metrics\": [...]}")
        return cls(tuple(_metric(m) for m in data["metrics"]))

    @classmethod
    def load(cls, path: Path) -> Analysis:
        return cls.from_json(read_json_object(path, ReleaseError))

    def to_json(self) -> dict[str, Any]:
        return {"metrics": [{k: v for k, v in {**asdict(m), **m.bounds}.items()
                             if k != "bounds" and v is not None} for m in self.metrics]}

    def verdict(self, taken: Sequence[Measurement]) -> tuple[Phase | None, list[str]]:
        """Failed, Error or Inconclusive with the reasons, or None while nothing decides."""
        outcomes = []
        for metric in self.metrics:
            if metric.dry_run:
                continue
            mine = [m for m in taken if m.metric == metric.name]
            phase = _metric_verdict(metric, mine)
            if phase is not None:
                last = next((m for m in reversed(mine) if m.phase is phase), None)
                outcomes.append((phase, f"{metric.name}: {phase.value}"
                                 + (f" ({last.message})" if last and last.message else "")))
        for phase in (Phase.FAILED, Phase.ERROR, Phase.INCONCLUSIVE):
            reasons = [why for p, why in outcomes if p is phase]
            if reasons:
                return phase, reasons
        return None, []


def _metric(raw: Any) -> Metric:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ReleaseError("a metric is an object with a name")
    measure = raw.get("measure")
    if not isinstance(measure, str) or not (
            measure in LIVE + OFFLINE or measure.split("_p")[0] in ("ttft", "tpot")):
        raise ReleaseError(f"metric {raw['name']}: measure {measure!r} is not one of "
                           f"{', '.join(LIVE + OFFLINE)}, ttft_pNN, tpot_pNN")
    bounds = {k: float(raw[k]) for k in _BOUNDS if k in raw}
    if not bounds:
        raise ReleaseError(f"metric {raw['name']}: give a bound ({', '.join(_BOUNDS)})")
    if measure in OFFLINE and not raw.get("eval_set"):
        raise ReleaseError(f"metric {raw['name']}: {measure} needs an eval_set")
    try:
        return Metric(raw["name"], measure, bounds, int(raw.get("window", 20)),
                      int(raw.get("failure_limit", 0)), int(raw.get("inconclusive_limit", 0)),
                      int(raw.get("consecutive_error_limit", 4)), bool(raw.get("dry_run")),
                      raw.get("eval_set"), raw.get("scorer"))
    except (TypeError, ValueError) as exc:
        raise ReleaseError(f"metric {raw['name']}: {exc}") from None


def _metric_verdict(metric: Metric, mine: Sequence[Measurement]) -> Phase | None:
    if sum(m.phase is Phase.FAILED for m in mine) > metric.failure_limit:
        return Phase.FAILED
    tail = 0
    for m in reversed(mine):
        if m.phase is not Phase.ERROR:
            break
        tail += 1
    if tail > metric.consecutive_error_limit:
        return Phase.ERROR
    if sum(m.phase is Phase.INCONCLUSIVE for m in mine) > metric.inconclusive_limit:
        return Phase.INCONCLUSIVE
    return None


def judge(metric: Metric, value: float | None, baseline: float | None) -> Measurement:
    """One measurement of `value` (the candidate's) against the metric's bounds."""
    def done(phase: Phase, message: str = "") -> Measurement:
        return Measurement(metric.name, phase, value, baseline, message, metric.dry_run)

    if value is None:
        return done(Phase.INCONCLUSIVE, "the candidate has no value")
    b = metric.bounds
    if "max" in b and value > b["max"]:
        return done(Phase.FAILED, f"{value:.4g} > max {b['max']:.4g}")
    if "min" in b and value < b["min"]:
        return done(Phase.FAILED, f"{value:.4g} < min {b['min']:.4g}")
    relative = {"max_above_stable", "max_ratio_to_stable"} & b.keys()
    if relative and (baseline is None or ("max_ratio_to_stable" in b and baseline <= 0)):
        return done(Phase.INCONCLUSIVE, "no stable baseline to compare with")
    if "max_above_stable" in b and baseline is not None \
            and value - baseline > b["max_above_stable"]:
        return done(Phase.FAILED, f"{value:.4g} is {value - baseline:.4g} above stable's "
                    f"{baseline:.4g} (at most {b['max_above_stable']:.4g})")
    if "max_ratio_to_stable" in b and baseline and value / baseline > b["max_ratio_to_stable"]:
        return done(Phase.FAILED, f"{value:.4g} is {value / baseline:.3g}× stable's "
                    f"{baseline:.4g} (at most {b['max_ratio_to_stable']:.3g}×)")
    return done(Phase.SUCCESSFUL)


def measure_live(metric: Metric, candidate: Sequence[Sample],
                 stable: Sequence[Sample]) -> Measurement:
    return judge(metric, statistic(metric.measure, candidate),
                 statistic(metric.measure, stable))


Answer = Callable[[str, list[dict[str, Any]]], str]  # (version, messages) -> the answer's text


def measure_offline(metric: Metric, answer: Answer, candidate: str,
                    stable: str) -> Measurement:
    """The evaluation set through the candidate (and stable, for a relative bound)."""
    from aruntime.adapt.evaluation import eval_score

    try:
        value = eval_score(metric, answer, candidate)
        relative = {"max_above_stable", "max_ratio_to_stable"} & metric.bounds.keys()
        baseline = eval_score(metric, answer, stable) if relative else None
    except Exception as exc:  # an evaluation that cannot run (any reason) is an Error
        return Measurement(metric.name, Phase.ERROR, message=f"{type(exc).__name__}: {exc}",
                           dry_run=metric.dry_run)
    return judge(metric, value, baseline)
