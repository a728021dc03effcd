"""`aruntime bench confidential --quick --json F` runs the handshake, seal/open and the sealed
against the clear chat in one run, prints the ratio last and writes a claim record."""

from __future__ import annotations

import io
import json
from pathlib import Path

from aruntime.bench.confidential import QUICK, run_bench
from aruntime.engine.default_model import resolve_model


def test_quick_writes_a_claim_with_every_figure(tmp_path: Path) -> None:
    out = io.StringIO()
    path = tmp_path / "conf.json"
    run_bench(resolve_model("demo"), QUICK, json_path=path, out=out)
    assert out.getvalue().strip().splitlines()[-1].startswith("confidential / clear")
    record = json.loads(path.read_text())
    metrics = record["measurement"]["metrics"] if "measurement" in record else record["metrics"]
    for name in ("handshake_p50_ms", "seal_us_per_kib", "open_us_per_kib", "clear_p50_ms",
                 "confidential_p50_ms", "ttft_ratio"):
        assert metrics[name] > 0, name
    assert metrics["probes"] == QUICK.probes
