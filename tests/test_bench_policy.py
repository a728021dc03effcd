"""`aruntime bench policy --quick --json F`: one run measures cached, uncached and re-parsed
decisions and the TTFT share, ends on the ratio line, and F holds the claim's metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aruntime.bench.claim import sha256_text
from aruntime.bench.policy_workload import RULES, policy_rules, policy_text
from aruntime.cli import main
from aruntime.policy.cedar_authorizer import CedarPolicy

KEYS = ("cached_p50_us", "cached_p99_us", "uncached_p50_us", "uncached_p99_us",
        "reparse_p99_us", "ttft_share")


def test_the_workload_policy_has_sixty_validated_rules() -> None:
    rules = policy_rules()
    assert len(rules) == RULES == 60 and len({r.split('")')[0] for r in rules}) == 60
    assert CedarPolicy.parse(policy_text()).size == 60  # validates against the schema


def test_quick_bench_writes_the_claim_metrics(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.json"
    assert main(["bench", "policy", "--quick", "--json", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"uncached decision p99 / re-parse p99: \d+\.\d{3} \(\d+\.\dx lower\)",
                        lines[-1])
    record = json.loads(path.read_text())
    metrics = record["metrics"]
    assert set(KEYS) <= set(metrics)
    assert 0 < metrics["cached_p50_us"] <= metrics["cached_p99_us"]
    assert 0 < metrics["uncached_p50_us"] <= metrics["uncached_p99_us"]
    assert 0 < metrics["ttft_share"] < 1
    assert metrics["cached_hits"] == metrics["cached_samples"]  # every cached one a hit
    assert metrics["answers_agree"] == metrics["reparse_samples"]  # as cedarpy answers
    assert record["value"] == metrics["uncached_p99_us"]
    assert record["baseline"]["value"] == metrics["reparse_p99_us"]
    assert record["raw_log_sha256"] == sha256_text((tmp_path / "policy.json.log").read_text())
