"""An offline evaluation set through one version: JSONL cases of {"messages": [...],
"expected": "…"}, scored by exact match, by whether the answer is JSON, or by a scoring
function `module:function(case, answer) -> float` in [0, 1]."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aruntime.adapt.analysis import Answer, Metric


def cases(path: Path) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            case = json.loads(line)
            if not isinstance(case, dict) or not isinstance(case.get("messages"), list):
                raise ValueError(f"{path}:{n}: a case is {{\"messages\": [...], ...}}")
            out.append(case)
    if not out:
        raise ValueError(f"{path}: no cases")
    return out


def _scorer(metric: Metric) -> Callable[[dict[str, Any], str], float]:
    if metric.measure == "exact_match":
        return lambda case, answer: float(answer.strip() == str(case.get("expected", "")).strip())
    if metric.measure == "json_valid":
        return lambda case, answer: float(_is_json(answer))
    module, _, name = (metric.scorer or "").partition(":")
    fn: Callable[[dict[str, Any], str], float] = getattr(importlib.import_module(module), name)
    return fn


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def eval_score(metric: Metric, answer: Answer, version: str) -> float:
    """The mean score of the version's answers over the metric's evaluation set."""
    score = _scorer(metric)
    got = [float(score(case, answer(version, case["messages"])))
           for case in cases(Path(metric.eval_set or ""))]
    return sum(got) / len(got)
