"""The registry on disk: `claims/<id>.json`, one record per claim, and `claims/logs/<id>.log`,
the raw log a performance claim's `raw_log_sha256` names."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aruntime.contracts import ClaimRecord, validation_message
from aruntime.timeutil import parse_rfc3339


class RegistryError(ValueError):
    """A record that cannot be read or used; the message names the file."""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "claim"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path}: not valid JSON: {exc}") from None


def parse_record(path: Path, data: Any) -> ClaimRecord:
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: a claim record is a JSON object")
    try:
        return ClaimRecord.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(f"{path}: {validation_message(exc)}") from None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a record


class Registry:
    """The `claims/` directory of one repository root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "claims"
        self.logs = self.dir / "logs"

    def paths(self) -> list[Path]:
        return sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []

    def path(self, claim_id: str) -> Path:
        return self.dir / f"{claim_id}.json"

    def log_path(self, claim_id: str) -> Path:
        return self.logs / f"{claim_id}.log"

    def relative(self, path: Path) -> str:
        """How findings name a file: relative to the root when it is inside it."""
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def records(self) -> list[ClaimRecord]:
        """Every record, valid, in id order; the first bad one raises (`claims check` reports
        them all)."""
        return [parse_record(p, read_json(p)) for p in self.paths()]

    def get(self, claim_id: str) -> ClaimRecord:
        path = self.path(claim_id)
        if not path.is_file():
            known = ", ".join(p.stem for p in self.paths()) or "none"
            raise RegistryError(f"no claim {claim_id!r} in {self.relative(self.dir)} "
                                f"(known: {known})")
        return parse_record(path, read_json(path))

    def save(self, record: ClaimRecord) -> Path:
        """Write a registered record, checked again first: a bad record never reaches disk."""
        if record.id is None:
            raise RegistryError("a record without an id cannot be saved in the registry")
        data = record.to_json()
        parse_record(self.path(record.id), data)
        write_json(self.path(record.id), data)
        return self.path(record.id)

    def new_id(self, metric: str, measured_at: str) -> str:
        """`<metric slug>-<UTC date of measurement>`, with `-2`, `-3`... when that is taken."""
        base = f"{slug(metric)}-{parse_rfc3339(measured_at).date().isoformat()}"
        candidate, n = base, 1
        while self.path(candidate).exists():
            n += 1
            candidate = f"{base}-{n}"
        return candidate
