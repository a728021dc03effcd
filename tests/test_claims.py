"""The claim registry end to end on small real repositories under tmp_path: a benchmark's claim
JSON is registered, checked, reviewed, yanked and rendered through the `aruntime claims`
commands; each broken record or document is caught with a message naming file and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aruntime.bench.claim import build_claim, write_claim
from aruntime.claims.check import check_repository
from aruntime.claims.docs_scan import scan_markdown
from aruntime.claims.registry import Registry, sha256_file
from aruntime.cli import main
from aruntime.contracts import ClaimRecord, ClaimStatus
from aruntime.timeutil import parse_rfc3339

REPO = Path(__file__).resolve().parents[1]
MEASURED, ADDED, NOW = "2026-01-02T03:04:05Z", "2026-01-02T04:00:00Z", "2026-01-03T00:00:00Z"
CLAIM_ID = "output-throughput-2026-01-02"
MODEL = "demo-small@sha256:" + "ab" * 32
README = """# Demo

Some prose: hidden 512, 8 layers, torch 2.13.0, port 8000, released 2026-01-02.

## Performance

<!-- claims:begin -->
<!-- claims:end -->
"""


def bench_json(directory: Path, *, value: float = 125.0, measured_at: str = MEASURED,
               name: str = "bench.json") -> Path:
    """A benchmark's claim record and raw log, as `aruntime bench engine --json` writes them."""
    raw = f"# raw log of a run measured at {measured_at}: {value} tok/s\n"
    record = build_claim(
        statement=f"ARuntime's output throughput is {value / 100:.2f}x transformers'",
        metric="output_throughput", value=value, unit="tok/s", direction="higher-is-better",
        baseline_name="transformers 5.24.0 generate, static batch 8", baseline_value=100.0,
        metrics={"mfu": 0.1}, model=MODEL, hardware="AMD EPYC, 2 cores", workload="64 requests",
        precision="fp32", context=640, concurrency=64, seed=0, duration_s=90.0,
        percentile="p50", raw_log=raw, measured_at=measured_at)
    return write_claim(directory / name, record, raw)[0]


def run(*argv: str | Path) -> int:
    return main(["claims", *map(str, argv)])


@pytest.fixture
def repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A repository with one registered performance claim, rendered."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text(README)
    assert run("add", bench_json(tmp_path), "--root", root, "--now", ADDED) == 0
    capsys.readouterr()
    return root


def record_path(root: Path, claim_id: str = CLAIM_ID) -> Path:
    return root / "claims" / f"{claim_id}.json"


def load(root: Path, claim_id: str = CLAIM_ID) -> dict[str, Any]:
    return json.loads(record_path(root, claim_id).read_text())


def save(root: Path, data: dict[str, Any], claim_id: str = CLAIM_ID) -> None:
    record_path(root, claim_id).write_text(json.dumps(data, indent=2) + "\n")


def check(root: Path, capsys: pytest.CaptureFixture[str], *more: str) -> tuple[int, str]:
    status = run("check", root, "--now", NOW, *more)
    return status, capsys.readouterr().out


# ---- the repository's own registry ----------------------------------------------------------


def test_the_repository_passes_its_own_check() -> None:
    records = Registry(REPO).records()
    # As of the registry's last change, so this test does not expire; `make test` runs the
    # check at the real time, which is what asks for re-reviews.
    last = max((e.at for r in records for e in r.history or []), default=parse_rfc3339(NOW))
    errors = [v for v in check_repository(REPO, now=last) if v.severity == "error"]
    assert errors == [], "\n".join(map(str, errors))
    engine = [r for r in records if r.metric == "output_throughput" and r.superseded_by is None]
    assert engine, "the engine benchmark's figure is registered as a claim"
    readme = (REPO / "README.md").read_text()
    for record in engine:
        row = next(line for line in readme.splitlines() if f"[{record.id}]" in line)
        assert f"{record.value:,.2f} tok/s" in row and f"{record.ratio:.2f}×" in row


# ---- add, render, check ---------------------------------------------------------------------


def test_add_registers_a_benchmark_record(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load(repo)
    assert data["id"] == CLAIM_ID and data["status"] == "active"
    assert data["review_by"] == "2026-04-02T03:04:05Z"  # measured_at + 90 days, UTC
    assert data["history"] == [{"at": ADDED, "status": "active", "note": "added from bench.json"}]
    aruntime_src, baseline_src = data["sources"]
    assert aruntime_src["kind"] == "repository" and aruntime_src["name"] == "aruntime"
    assert "commit" in aruntime_src  # this checkout's commit
    assert baseline_src["name"] == "transformers" and baseline_src["version"] == "5.24.0"
    assert {"python", "torch", "transformers"} <= set(data["dependencies"])
    log = Registry(repo).log_path(CLAIM_ID)
    assert sha256_file(log) == data["raw_log_sha256"]
    readme = (repo / "README.md").read_text()
    row = next(line for line in readme.splitlines() if f"[{CLAIM_ID}]" in line)
    assert "125.00 tok/s" in row and "100.00 tok/s" in row and "1.25×" in row and MODEL[:30] in row
    changelog = (repo / "CHANGELOG.md").read_text()
    assert "### Claims - 2026-01-02" in changelog and f"- [{CLAIM_ID}]" in changelog
    assert check(repo, capsys) == (0, f"claims check: 0 error(s), 0 warning(s) at {NOW}\n")


def test_the_schema_file_alone_rejects_an_incomplete_performance_claim(repo: Path) -> None:
    import jsonschema

    schema = json.loads((REPO / "schemas" / "aruntime.claim.v1.json").read_text())
    data = load(repo)
    jsonschema.validate(data, schema)
    measurement = {k: v for k, v in data.items()
                   if k not in ("id", "sources", "review_by", "status", "history")}
    jsonschema.validate(measurement, schema)  # a benchmark's output, before `claims add`
    del data["hardware"]
    with pytest.raises(jsonschema.ValidationError, match="'hardware' is a dependency"):
        jsonschema.validate(data, schema)


def test_add_refuses_what_it_cannot_register(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    bench = bench_json(tmp_path)
    (root / "README.md").write_text("# no markers\n")
    assert run("add", bench, "--root", root) == 2
    assert "README.md: needs one '<!-- claims:begin -->'" in capsys.readouterr().err
    assert not (root / "claims").exists()  # nothing written
    (root / "README.md").write_text(README)
    Path(f"{bench}.log").write_text("edited\n")
    assert run("add", bench, "--root", root) == 2
    assert "sha256 is not the record's raw_log_sha256" in capsys.readouterr().err
    assert run("add", bench, "--root", root, "--log", tmp_path / "absent.log") == 2
    assert "no raw log there" in capsys.readouterr().err


# ---- broken records -------------------------------------------------------------------------


def test_a_performance_claim_missing_context_fields(repo: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = load(repo)
    del data["hardware"], data["precision"]
    save(repo, data)
    status, out = check(repo, capsys)
    assert status == 1
    for field in ("hardware", "precision"):
        assert (f"claims/{CLAIM_ID}.json: {field}: missing: a performance claim records every "
                "context field") in out


def test_an_unlabelled_claim(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load(repo)
    del data["label"]
    save(repo, data)
    status, out = check(repo, capsys)
    assert status == 1
    assert (f"claims/{CLAIM_ID}.json: label: missing: every claim is labelled, one of "
            "production-implementation, research-prototype, editorial-synthesis, forecast") in out
    data["label"] = "marketing"
    save(repo, data)
    assert f"claims/{CLAIM_ID}.json: label: 'marketing' is not one of" in check(repo, capsys)[1]


def test_an_unsourced_or_unpinned_claim(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load(repo)
    data["sources"] = [{"kind": "paper", "name": "Efficient Memory Management for LLM Serving"}]
    save(repo, data)
    status, out = check(repo, capsys)
    assert status == 1 and "sources.0: a source needs a version, commit or date" in out
    del data["sources"]
    save(repo, data)
    status, out = check(repo, capsys)
    assert status == 1 and "sources: missing: a registered claim names its primary sources" in out


def test_an_editorial_claim_needs_no_measurement(repo: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = {"schema": "aruntime.claim/v1", "id": "paged-attention-origin",
            "label": "editorial-synthesis",
            "statement": "Paged KV caches come from vLLM's PagedAttention paper",
            "sources": [{"kind": "paper", "name": "Efficient Memory Management for Large "
                         "Language Model Serving with PagedAttention",
                         "url": "https://arxiv.org/abs/2309.06180", "date": "2023-09-12"}],
            "review_by": "2026-06-01T00:00:00Z", "status": "active",
            "history": [{"at": ADDED, "status": "active", "note": "written by hand"}]}
    save(repo, data, "paged-attention-origin")
    status, out = check(repo, capsys)
    assert status == 1 and "CHANGELOG.md: paged-attention-origin: no Added entry" in out
    assert run("render", "--root", repo) == 0
    assert check(repo, capsys)[0] == 0
    data["value"] = 3.0  # a figure makes it a performance claim
    save(repo, data, "paged-attention-origin")
    status, out = check(repo, capsys)
    assert status == 1 and "paged-attention-origin.json: metric: missing" in out


def test_a_record_whose_raw_log_changed(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Registry(repo).log_path(CLAIM_ID).write_text("tampered\n")
    status, out = check(repo, capsys)
    assert status == 1
    assert f"raw_log_sha256: does not match claims/logs/{CLAIM_ID}.log" in out


# ---- documents ------------------------------------------------------------------------------


def scan(text: str, base_dir: Path, claims: dict[str, ClaimRecord] | None = None) -> list[str]:
    return [f"{v.field}: {v.message}"
            for v in scan_markdown(text, file="README.md", base_dir=base_dir, claims=claims or {})]


@pytest.mark.parametrize("line", [
    "Throughput: TBD", "ARuntime is XX% faster", "Decode: ??? tok/s", "TODO: add the figure",
    "It reaches 1.XX× the baseline",
])
def test_placeholder_figures(line: str, tmp_path: Path) -> None:
    found = scan(f"# T\n\n{line}\n", tmp_path)
    assert found and found[0].startswith("line 3: placeholder "), found


def test_image_placeholders(tmp_path: Path) -> None:
    (tmp_path / "chart.png").write_bytes(b"\x89PNG")
    text = ("![]()\n![throughput](missing.png)\n<img src=\"\" alt=\"x\">\n"
            "![ok](chart.png)\n![remote](https://example.com/c.png)\n")
    assert scan(text, tmp_path) == [
        "line 1: image placeholder: ![]() has no target",
        "line 2: image placeholder: ![throughput](missing.png) points at missing.png, which "
        "does not exist",
        "line 3: image placeholder: <img src=\"\" alt=\"x\"> has no target",
    ]


def test_figures_must_name_a_current_claim(repo: Path) -> None:
    claims = {r.id: r for r in Registry(repo).records() if r.id}
    assert scan("ARuntime is 3.58× faster than transformers.\n", repo, claims) == [
        "line 1: unsourced figure '3.58×': name its claim id on the same line, e.g. [<claim-id>]"]
    assert scan(f"ARuntime is 1.25× transformers [{CLAIM_ID}].\n", repo, claims) == []
    assert scan("460 tok/s (claim: made-up-2026-01-01)\n", repo, claims) == [
        "line 1: cites 'made-up-2026-01-01', which is not a registered claim",
        "line 1: unsourced figure '460 tok/s': name its claim id on the same line, "
        "e.g. [<claim-id>]"]
    yanked = {CLAIM_ID: claims[CLAIM_ID].model_copy(update={"status": ClaimStatus.YANKED})}
    assert "cites only yanked claims" in scan(f"1.25× [{CLAIM_ID}]\n", repo, yanked)[0]
    assert scan(f"~~1.25×~~ [{CLAIM_ID}]\n", repo, yanked) == []


@pytest.mark.parametrize("text", [
    "```sh\ncurl ... # 3.58× faster, 460 tok/s\n```\n", "Run `bench --rate 460tok/s`.\n",
    "Built on torch 2.13.0 and Python 3.11, released 2026-11-27.\n",
    "The demo model: hidden 512, 8 layers, 4 KV heads, 40M parameters.\n",
    "Listens on 127.0.0.1:8000; errors are HTTP 4xx/5xx; frames of 1920x1080.\n",
    "<!-- 3.58× in a comment -->\n", "See [the run](https://example.com/r/3.5x).\n",
])
def test_numbers_that_are_not_figures(text: str, tmp_path: Path) -> None:
    assert scan(text, tmp_path) == []


def test_docs_pages_are_scanned_too(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "docs").mkdir()
    (repo / "docs" / "perf.md").write_text("# Perf\n\nPeak RSS is 310 MB.\n")
    status, out = check(repo, capsys)
    assert status == 1 and "docs/perf.md: line 3: unsourced figure '310 MB'" in out


def test_an_unsourced_figure_in_the_readme(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = repo / "README.md"
    readme.write_text(readme.read_text() + "\nARuntime serves 460 tok/s on one core.\n")
    status, out = check(repo, capsys)
    assert status == 1 and "README.md: line 18: unsourced figure '460 tok/s'" in out


# ---- rendered files -------------------------------------------------------------------------


def test_stale_renders_are_caught_and_fixed(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme, changelog = repo / "README.md", repo / "CHANGELOG.md"
    good_readme, good_changelog = readme.read_text(), changelog.read_text()
    readme.write_text(good_readme.replace("125.00 tok/s", "130.00 tok/s"))
    changelog.write_text(good_changelog.replace(f"- [{CLAIM_ID}]", "- [elsewhere]"))
    status, out = check(repo, capsys)
    assert status == 1
    assert "README.md: claims section: the performance table is out of date" in out
    assert f"CHANGELOG.md: {CLAIM_ID}: no Added entry for 2026-01-02" in out
    assert run("render", "--root", repo) == 0
    assert (readme.read_text(), changelog.read_text()) == (good_readme, good_changelog)


# ---- review dates, reruns, dependencies, yanks --------------------------------------------


def test_an_expired_review(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    later = "2026-04-02T03:04:05Z"  # review_by itself: due from that instant
    status, out = check(repo, capsys, "--now", later)
    assert status == 1
    assert (f"claims/{CLAIM_ID}.json: review_by: needs-review: review_by 2026-04-02T03:04:05Z "
            "has passed") in out
    assert run("due", "--root", repo, "--now", NOW) == 0
    assert capsys.readouterr().out == ""
    assert run("due", "--root", repo, "--now", later, "--mark") == 0
    assert capsys.readouterr().out.startswith(f"{CLAIM_ID}\treview_by 2026-04-02T03:04:05Z")
    data = load(repo)
    assert data["status"] == "needs-review" and data["history"][-1]["at"] == later
    assert "**needs review**" in (repo / "README.md").read_text()
    assert run("review", CLAIM_ID, "--root", repo, "--now", later, "--note", "reran, same") == 0
    data = load(repo)
    assert data["status"] == "active" and data["review_by"] == "2026-07-01T03:04:05Z"
    assert check(repo, capsys, "--now", later)[0] == 0


def test_a_rerun_beyond_five_percent_puts_the_old_claim_under_review(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rerun = bench_json(tmp_path, value=140.0, measured_at="2026-01-05T00:00:00Z", name="b.json")
    assert run("add", rerun, "--root", repo, "--now", "2026-01-05T01:00:00Z") == 0
    old, new = load(repo), load(repo, "output-throughput-2026-01-05")
    assert old["status"] == "needs-review"
    assert old["superseded_by"] == new["id"]
    assert "differs by +12.0% (more than 5%)" in old["history"][-1]["note"]
    readme = (repo / "README.md").read_text()
    assert f"[{new['id']}]" in readme and f"[{CLAIM_ID}]" not in readme
    status, out = check(repo, capsys, "--now", "2026-01-06T00:00:00Z")
    assert status == 0 and "warning: " in out  # superseded: no longer published
    close = bench_json(tmp_path, value=143.0, measured_at="2026-01-06T00:00:00Z", name="c.json")
    assert run("add", close, "--root", repo, "--now", "2026-01-06T01:00:00Z") == 0
    new = load(repo, "output-throughput-2026-01-05")
    assert new["status"] == "active" and new["superseded_by"] == "output-throughput-2026-01-06"


def test_changed_dependencies_warn_and_fail_when_strict(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load(repo)
    data["dependencies"]["torch"] = "2.0.0"
    save(repo, data)
    status, out = check(repo, capsys)
    assert status == 0
    assert (f"warning: claims/{CLAIM_ID}.json: dependencies.torch: needs-review: "
            "recorded 2.0.0") in out
    assert check(repo, capsys, "--strict")[0] == 1
    assert run("review", CLAIM_ID, "--root", repo, "--now", NOW) == 0  # today's versions recorded
    assert check(repo, capsys, "--strict")[0] == 0


def test_a_yanked_claim_stays_with_its_reason(repo: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    why = "the baseline ran on one thread"
    assert run("yank", CLAIM_ID, "--why", why, "--root", repo, "--now", NOW) == 0
    data = load(repo)
    assert data["status"] == "yanked" and data["value"] == 125.0
    assert data["history"][-1] == {"at": NOW, "status": "yanked", "note": why}
    changelog = (repo / "CHANGELOG.md").read_text()
    assert (f"### Claims - 2026-01-03\n\n#### Removed\n\n- [YANKED] [{CLAIM_ID}]"
            f"(claims/{CLAIM_ID}.json): {why}") in changelog
    readme = (repo / "README.md").read_text().splitlines()
    row = next(line for line in readme if f"[{CLAIM_ID}]" in line)
    assert "~~125.00 tok/s~~" in row and "~~1.25× higher~~" in row and f"**yanked**: {why}" in row
    assert check(repo, capsys)[0] == 0
    assert run("yank", CLAIM_ID, "--why", "again", "--root", repo) == 2
    assert run("review", CLAIM_ID, "--root", repo) == 2
    assert "a yanked claim stays yanked" in capsys.readouterr().err


# ---- the command line, as CI runs it --------------------------------------------------------


def aruntime(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aruntime.cli", "claims", *map(str, argv)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_exit_codes(repo: Path) -> None:
    assert aruntime("check", repo, "--now", NOW).returncode == 0
    data = load(repo)
    del data["workload"]
    save(repo, data)
    for target in (repo, record_path(repo)):  # the repository, or one record
        broken = aruntime("check", target, "--now", NOW)
        assert broken.returncode == 1
        assert f"claims/{CLAIM_ID}.json: workload: missing" in broken.stdout
    for argv in (("review", "no-such-claim", "--root", repo), ("check", repo / "absent"),
                 ("due", "--now", "yesterday")):
        bad = aruntime(*argv)
        assert bad.returncode == 2, argv
        assert len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith("aruntime: error: ")


def test_a_lower_is_better_figure_reads_as_times_lower(tmp_path: Path, repo: Path) -> None:
    """The README says what a reader understands: a TTFT 3.60x below its baseline is "3.60×
    lower", not the raw value / baseline "0.28×"; the record keeps the ratio and its direction."""
    raw = "# raw log\n"
    record = build_claim(
        statement="KV tiers give 3.60x lower median TTFT than the device-only prefix cache",
        metric="ttft_p50", value=127.03, unit="ms", direction="lower-is-better",
        baseline_name="device-only prefix cache", baseline_value=456.92, metrics={},
        model=MODEL, hardware="AMD EPYC, 2 cores", workload="trace slice", precision="fp32",
        context=640, concurrency=1, seed=0, duration_s=9.0, percentile="p50", raw_log=raw,
        measured_at=MEASURED)
    path = write_claim(tmp_path / "ttft.json", record, raw)[0]
    assert run("add", path, "--id", "ttft-lower", "--root", repo, "--now", ADDED) == 0
    data = load(repo, "ttft-lower")
    assert data["direction"] == "lower-is-better"
    assert data["ratio"] == pytest.approx(127.03 / 456.92)
    row = next(line for line in (repo / "README.md").read_text().splitlines()
               if "[ttft-lower]" in line)
    assert "3.60× lower" in row and "0.28×" not in row
    engine_row = next(line for line in (repo / "README.md").read_text().splitlines()
                      if f"[{CLAIM_ID}]" in line)
    assert "1.25× higher" in engine_row


@pytest.mark.parametrize(("direction", "value", "text"), [
    ("higher-is-better", 56.81, "0.92× (8% lower)"),
    ("lower-is-better", 110.0, "0.91× (9% higher)")])
def test_a_figure_worse_than_its_baseline_says_so(direction: str, value: float,
                                                   text: str) -> None:
    """A ratio under 1 is not "0.92× higher": the row says by how much it falls short."""
    from aruntime.claims.render import gain_text

    record = build_claim(
        statement="a figure short of its baseline", metric="m", value=value, unit="tok/s",
        direction=direction, baseline_name="b", baseline_value=61.67 if value < 100 else 100.0,
        metrics={}, model=MODEL, hardware="AMD EPYC, 2 cores", workload="w", precision="fp32",
        context=1, concurrency=8, seed=0, duration_s=1.0, percentile="p50", raw_log="log\n",
        measured_at=MEASURED)
    assert gain_text(ClaimRecord.model_validate(record)) == text
