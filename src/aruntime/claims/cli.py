"""`aruntime claims check|add|review|yank|due|render`. Every command works on one repository
root (`--root`, default the current directory): its `claims/`, README.md, docs/ and
CHANGELOG.md. Commands that change a claim render the README table and CHANGELOG after."""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from aruntime.claims import lifecycle, render
from aruntime.claims.check import check_record_file, check_repository
from aruntime.claims.provenance import baseline_source, installed_versions, runtime_source
from aruntime.claims.registry import Registry, RegistryError, parse_record, read_json, sha256_file
from aruntime.contracts import ClaimRecord, validation_message
from aruntime.errors import UsageError
from aruntime.timeutil import parse_rfc3339, rfc3339, utc_now


def _now(args: argparse.Namespace) -> datetime:
    if args.now is None:
        return utc_now()
    try:
        return parse_rfc3339(args.now)
    except ValueError as exc:
        raise UsageError(f"--now: {exc}") from None


def _common(parser: argparse.ArgumentParser, *, root: bool = True) -> None:
    if root:
        parser.add_argument("--root", type=Path, default=Path("."), metavar="DIR",
                            help="the repository root holding claims/ (default: .)")
    parser.add_argument("--now", metavar="TIME",
                        help="take TIME (RFC 3339 UTC, e.g. 2026-01-02T03:04:05Z) as now")


def _records(registry: Registry) -> list[ClaimRecord]:
    try:
        return registry.records()
    except RegistryError as exc:
        raise UsageError(f"{exc} (see `aruntime claims check`)") from None


def _render(registry: Registry, records: list[ClaimRecord]) -> list[Path]:
    changed = render.render(registry.root, records)
    for path in changed:
        print(f"rendered {registry.relative(path)}")
    return changed


def _ready_to_render(registry: Registry, records: list[ClaimRecord]) -> None:
    """Fail before anything is written, not after."""
    try:
        render.rendered(registry.root, records)
    except render.RenderError as exc:
        raise UsageError(str(exc)) from None


def _save_and_render(registry: Registry, changed: list[ClaimRecord]) -> None:
    for record in changed:
        registry.save(record)
    _render(registry, _records(registry))


# ---- check ---------------------------------------------------------------------------------


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", type=Path, default=Path("."),
                        help="a repository root (default: .) or one claim record file")
    _common(parser, root=False)
    parser.add_argument("--strict", action="store_true",
                        help="changed dependency versions are errors, not warnings")


def run_check(args: argparse.Namespace) -> int:
    now = _now(args)
    if args.path.is_file():
        found = check_record_file(args.path, now=now, strict=args.strict)
    elif args.path.is_dir():
        if not (args.path / "claims").is_dir() and not (args.path / "README.md").is_file():
            raise UsageError(f"{args.path}: not a repository root (no claims/ or README.md)")
        found = check_repository(args.path, now=now, strict=args.strict)
    else:
        raise UsageError(f"{args.path}: no such file or directory")
    errors = [v for v in found if v.severity == "error"]
    for violation in sorted(found, key=lambda v: (v.severity, v.file)):
        print(violation)
    print(f"claims check: {len(errors)} error(s), {len(found) - len(errors)} warning(s) "
          f"at {rfc3339(now)}")
    return 1 if errors else 0


# ---- add -----------------------------------------------------------------------------------


def add_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bench", type=Path, metavar="BENCH.json",
                        help="a benchmark's claim record (`aruntime bench engine --json FILE`)")
    parser.add_argument("--log", type=Path, metavar="FILE",
                        help="its raw log (default: BENCH.json.log, as the benchmark writes it)")
    parser.add_argument("--id", help="the claim id (default: <metric>-<UTC date measured>)")
    _common(parser)


def _measurement(path: Path, log: Path) -> ClaimRecord:
    try:
        record = parse_record(path, read_json(path))
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    if record.id is not None:
        raise UsageError(f"{path}: already registered as {record.id!r}")
    if not record.is_performance:
        raise UsageError(f"{path}: not a benchmark's claim record (it has no metric)")
    if not log.is_file():
        raise UsageError(f"{log}: no raw log there (the record's raw_log_sha256 names one); "
                         "give it with --log")
    if sha256_file(log) != record.raw_log_sha256:
        raise UsageError(f"{log}: its sha256 is not the record's raw_log_sha256")
    return record


def run_add(args: argparse.Namespace) -> int:
    registry, now = Registry(args.root), _now(args)
    log = args.log or args.bench.with_name(args.bench.name + ".log")
    measurement = _measurement(args.bench, log)
    records = _records(registry)
    _ready_to_render(registry, records)
    assert measurement.metric is not None and measurement.measured_at is not None
    claim_id = args.id or registry.new_id(measurement.metric, measurement.measured_at)
    if registry.path(claim_id).exists():
        raise UsageError(f"--id {claim_id}: a claim with that id exists")
    assert measurement.baseline is not None
    sources = [runtime_source()]
    baseline = baseline_source(measurement.baseline.name)
    sources += [baseline] if baseline is not None else []
    try:
        record = lifecycle.register(measurement, claim_id=claim_id, now=now, sources=sources,
                                    dependencies=installed_versions(),
                                    note=f"added from {args.bench.name}")
    except ValidationError as exc:  # e.g. an --id that is not a slug
        raise UsageError(f"{args.bench}: {validation_message(exc)}") from None
    except lifecycle.LifecycleError as exc:
        raise UsageError(f"{args.bench}: {exc}") from None
    reruns = [lifecycle.supersede(old, record, now) for old in records
              if lifecycle.is_published(old) and lifecycle.same_figure(old, record)]
    registry.logs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, registry.log_path(claim_id))
    print(f"added {registry.relative(registry.save(record))} "
          f"({record.value} {record.unit}, ratio {record.ratio:.2f}, review by "
          f"{rfc3339(record.review_by) if record.review_by else '-'})")
    for old in reruns:
        print(f"{old.id}: {old.status}; {old.history[-1].note if old.history else ''}")
    _save_and_render(registry, reruns)
    return 0


# ---- review, yank, due, render -------------------------------------------------------------


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the claim id")
    parser.add_argument("--note", default="", help="what was checked")
    parser.add_argument("--days", type=int, default=lifecycle.REVIEW_PERIOD.days,
                        help="days until the next review (default: %(default)s)")
    _common(parser)


def _change(args: argparse.Namespace, how: str) -> int:
    registry, now = Registry(args.root), _now(args)
    records = _records(registry)
    _ready_to_render(registry, records)
    try:
        record = registry.get(args.id)
        if how == "review":
            if args.days < 1:
                raise UsageError(f"--days {args.days}: give at least 1")
            record = lifecycle.review(record, now, dependencies=installed_versions(),
                                      period=timedelta(days=args.days), note=args.note)
        else:
            record = lifecycle.yank(record, now, args.why or "")
    except (RegistryError, lifecycle.LifecycleError) as exc:
        raise UsageError(str(exc)) from None
    _save_and_render(registry, [record])
    print(f"{record.id}: {record.status}; {record.history[-1].note if record.history else ''}")
    return 0


def run_review(args: argparse.Namespace) -> int:
    return _change(args, "review")


def add_yank_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the claim id")
    parser.add_argument("--why", metavar="TEXT", help="the reason, kept with the claim")
    _common(parser)


def run_yank(args: argparse.Namespace) -> int:
    if not (args.why or "").strip():
        raise UsageError("claims yank needs --why TEXT: a yanked claim keeps its reason")
    return _change(args, "yank")


def add_due_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--mark", action="store_true",
                        help="write needs-review into each expired claim (and render)")


def run_due(args: argparse.Namespace) -> int:
    registry, now = Registry(args.root), _now(args)
    records = _records(registry)
    found = lifecycle.due(records, now)
    for record, why in found:
        print(f"{record.id}\t{why}")
    if not found:
        print(f"no claim needs review at {rfc3339(now)}", file=sys.stderr)
    expired = [r for r, _ in found if lifecycle.expired(r, now)]
    if args.mark and expired:
        _ready_to_render(registry, records)
        _save_and_render(registry, [lifecycle.mark_due(r, now) for r in expired])
    return 0


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("."), metavar="DIR",
                        help="the repository root holding claims/ (default: .)")


def run_render(args: argparse.Namespace) -> int:
    registry = Registry(args.root)
    records = _records(registry)
    _ready_to_render(registry, records)
    if not _render(registry, records):
        print("README.md and CHANGELOG.md are up to date", file=sys.stderr)
    return 0
