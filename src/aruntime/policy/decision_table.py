"""A table of expected decisions, what `aruntime policy test` runs against a bundle: rows of
principal {id, tenant, roles}, action, resource {type, id, attrs}, context and `expect` (allow or
deny), in a JSON array (`.json`) or one object a line (`.jsonl`); `name` labels a row.

Each row is decided as a decision point would decide it (`CedarAuthorizer.decide`: the context's
tenant is the principal's and its time the current minute unless the row says otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aruntime.policy.decision import Action, Authorizer, Decision, Resource
from aruntime.policy.identity import Principal

EXPECT = ("allow", "deny")


class TableError(ValueError):
    """A table that cannot be read, or a row that does not say what to decide."""


@dataclass(frozen=True, slots=True)
class Row:
    number: int  # 1-based, as a person counts rows (or lines of a .jsonl file)
    principal: Principal
    action: Action
    resource: Resource
    context: Mapping[str, Any] = field(default_factory=dict)
    expect: str = "allow"
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or (f"{self.principal.id} ({self.principal.tenant}) {self.action} "
                             f'{self.resource.type}::"{self.resource.id}"')


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise TableError(f"{where}: `{key}` must be a non-empty string")
    return value


def _object(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise TableError(f"{where}: `{key}` must be an object")
    return value


def parse_row(raw: Any, number: int) -> Row:
    where = f"row {number}"
    if not isinstance(raw, dict):
        raise TableError(f"{where}: must be an object")
    who = _object(raw, "principal", where)
    roles = who.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TableError(f"{where}: principal `roles` must be a list of strings")
    try:
        action = Action(_text(raw, "action", where))
    except ValueError:
        raise TableError(f"{where}: `action` must be one of "
                         f"{', '.join(a.value for a in Action)}") from None
    what = _object(raw, "resource", where)
    expect = raw.get("expect")
    if expect not in EXPECT:
        raise TableError(f"{where}: `expect` must be allow or deny")
    name = raw.get("name")
    return Row(number, Principal(_text(who, "id", f"{where} principal"),
                                 _text(who, "tenant", f"{where} principal"), frozenset(roles)),
               action, Resource(_text(what, "type", f"{where} resource"),
                                _text(what, "id", f"{where} resource"),
                                _object(what, "attrs", f"{where} resource")),
               _object(raw, "context", where), expect, name if isinstance(name, str) else None)


def read_table(path: Path) -> list[Row]:
    """The rows of a `.json` or `.jsonl` table; TableError naming the row on a bad one."""
    if path.suffix not in (".json", ".jsonl"):
        raise TableError(f"{path}: a table is a .json array or a .jsonl file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if path.suffix == ".json":
            raws = json.loads(text)
        else:
            raws = [(i, json.loads(line)) for i, line in enumerate(text.splitlines(), 1)
                    if line.strip()]
    except ValueError as exc:
        raise TableError(f"{path}: not JSON: {exc}") from None
    if path.suffix == ".jsonl":
        numbered = raws
    elif isinstance(raws, list):
        numbered = list(enumerate(raws, 1))
    else:
        raise TableError(f"{path}: a .json table is an array of rows")
    rows = []
    for number, raw in numbered:
        try:
            rows.append(parse_row(raw, number))
        except TableError as exc:
            raise TableError(f"{path}: {exc}") from None
    if not rows:
        raise TableError(f"{path}: no rows")
    return rows


@dataclass(frozen=True, slots=True)
class Result:
    row: Row
    decision: Decision

    @property
    def passed(self) -> bool:
        return self.decision.word == self.row.expect


def run_table(authorizer: Authorizer, rows: list[Row]) -> list[Result]:
    return [Result(row, authorizer.decide(row.principal, row.action, row.resource, row.context))
            for row in rows]
