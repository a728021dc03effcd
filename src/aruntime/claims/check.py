"""`aruntime claims check`: the registry, the documents that cite it and the files rendered
from it, checked together. Findings come back as a list; nothing here writes."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from aruntime.claims import render, rules
from aruntime.claims.docs_scan import doc_files, scan_markdown
from aruntime.claims.provenance import installed_versions
from aruntime.claims.registry import Registry, RegistryError, read_json
from aruntime.claims.rules import Violation
from aruntime.contracts import ClaimRecord, ClaimStatus


def check_record_file(path: Path, *, now: datetime, strict: bool) -> list[Violation]:
    """One record, and, when it sits in a `claims/` directory, what it owes that registry."""
    registry = Registry(path.parent.parent if path.parent.name == "claims" else path.parent)
    records, found = _load(registry, [path])
    known = {p.stem for p in registry.paths()}
    for record_path, record in records.values():
        found += rules.registry_violations(registry, record_path, record, now=now,
                                           known_ids=known, running=installed_versions(),
                                           strict=strict)
    return found


def _load(registry: Registry,
          paths: list[Path]) -> tuple[dict[str, tuple[Path, ClaimRecord]], list[Violation]]:
    """The valid registered records by id, and the findings on all of them."""
    valid, found = {}, []
    for path in paths:
        file = registry.relative(path)
        try:
            data = read_json(path)
        except RegistryError as exc:
            found.append(Violation(file, "(file)", str(exc).removeprefix(f"{path}: ")))
            continue
        record, problems = rules.record_violations(file, data)
        found += problems
        if record is not None and record.id is None:
            found.append(Violation(file, "id", "missing: a record in claims/ is registered; "
                                   "register a benchmark's claim JSON with `aruntime claims add`"))
        elif record is not None:
            valid[path.stem] = (path, record)
    return valid, found


def check_repository(root: Path, *, now: datetime, strict: bool = False) -> list[Violation]:
    registry = Registry(root)
    paths = registry.paths()
    valid, found = _load(registry, paths)
    running = installed_versions()
    for path, record in valid.values():
        found += rules.registry_violations(registry, path, record, now=now,
                                           known_ids=set(valid), running=running, strict=strict)
    claims = {record.id: record for _, record in valid.values() if record.id is not None}
    for doc in doc_files(root):
        found += scan_markdown(doc.read_text(encoding="utf-8"), file=registry.relative(doc),
                               base_dir=doc.parent, claims=claims)
    if len(valid) == len(paths):  # rendered from a partial registry, every file looks stale
        found += rendering_violations(root, list(claims.values()))
    return found


def rendering_violations(root: Path, records: list[ClaimRecord]) -> list[Violation]:
    """The README table and the CHANGELOG entries are what rendering would write now."""
    if not records and not (root / "CHANGELOG.md").exists():
        return []
    try:
        files = render.rendered(root, records)
    except render.RenderError as exc:
        return [Violation(exc.file, "claims section", exc.reason)]
    found = []
    for path, (old, new) in files.items():
        name = path.name
        if old is None:
            found.append(Violation(name, "(file)", "missing: run `aruntime claims render`"))
            continue
        if path.name == "CHANGELOG.md":
            found += _changelog_gaps(old, records)
        if old != new and not any(v.file == name for v in found):
            what = "performance table is" if name == "README.md" else "claim entries are"
            found.append(Violation(name, "claims section", f"the {what} out of date with "
                                   "claims/: run `aruntime claims render`"))
    return found


def _changelog_gaps(text: str, records: list[ClaimRecord]) -> list[Violation]:
    """Every add and every yank has its line, whatever else the file says."""
    lines = set(text.splitlines())
    found = []
    for record in records:
        for i, entry in enumerate(record.history or []):
            kind, line = render.changelog_entry(record, i, entry)
            if (kind == "Added" or entry.status is ClaimStatus.YANKED) and line not in lines:
                tag = "[YANKED] " if kind == "Removed" else ""
                found.append(Violation("CHANGELOG.md", str(record.id),
                                       f"no {tag or kind + ' '}entry for "
                                       f"{entry.at.date().isoformat()}: run `aruntime claims "
                                       "render`"))
    return found
