"""`aruntime bench grammar` and `aruntime bench structured` machinery on the tiny checkpoint:
fields and the ratio line, not speed."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from aruntime.bench import grammar, structured
from aruntime.bench.claim import sha256_text
from aruntime.cli import main


def test_grammar_bench_measures_both_engines(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    result = grammar.run_bench(tiny_model_dir, grammar.Workload(rounds=1),
                               json_path=tmp_path / "g.json", out=out, progress=io.StringIO())
    last = out.getvalue().strip().splitlines()[-1]
    match = re.fullmatch(r"per-token mask cost ratio llguidance / xgrammar: (\d+\.\d\d)", last)
    assert match, last
    record = json.loads((tmp_path / "g.json").read_text())
    assert record == result.record and record["baseline"]["name"] == "xgrammar"
    assert float(match[1]) == pytest.approx(record["ratio"], abs=0.006)
    assert record["metrics"]["unenforced_reported"] == len(grammar.UNENFORCED)  # llguidance's
    assert record["raw_log_sha256"] == sha256_text((tmp_path / "g.json.log").read_text())


def test_structured_bench_compares_the_same_requests(tiny_model_dir: Path,
                                                     tmp_path: Path) -> None:
    out = io.StringIO()
    w = structured.Workload(max_tokens=12, rounds=1)
    result = structured.run_bench(tiny_model_dir, w, json_path=tmp_path / "s.json", out=out,
                                  progress=io.StringIO())
    lines = out.getvalue().strip().splitlines()
    assert re.fullmatch(r"decode throughput ratio constrained / unconstrained: \d+\.\d\d",
                        lines[-1])
    assert "constrained outputs the grammar accepts:  8/8" in out.getvalue()
    record = result.record
    assert (record["metric"], record["baseline"]["name"], record["concurrency"]) == (
        "decode_throughput", "unconstrained", 8)
    assert record["metrics"]["decode_tokens"] == 8 * (w.max_tokens - 1)  # lengths match


def test_bad_arguments_are_one_line_exit_2(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "structured", "--model", str(tmp_path)]) == 2
    assert main(["bench", "grammar", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("aruntime: error: --model") for e in err)
