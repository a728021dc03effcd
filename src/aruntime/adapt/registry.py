"""The release registry: immutable versions of named artifacts, their signed provenance, the
aliases over them (`stable`, `canary`, any other) with every move kept, and the traffic record
of which versions answered a name's requests, and in what shares, from when — so `served(name,
at)` answers for any past instant (MLflow's users asked for exactly this: mlflow#2169).

Rows live in the journal's database (SQLite or PostgreSQL), beside the runs. A version's content
is copied into the store (a model, by reference: checkpoints are large and its revision names
it); whatever is read to serve is verified first — provenance signature and content digest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.adapt import provenance
from aruntime.adapt.artifact import (
    Kind,
    ReleaseError,
    UnknownRelease,
    check_artifact,
    content_digest,
)
from aruntime.confidential.evidence import unb64
from aruntime.durable.sql_journal import SqlJournal
from aruntime.evidence.signing import DeploymentKey
from aruntime.timeutil import sortable_rfc3339, utc_now

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS releases (
        name TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL,
        stored TEXT NOT NULL, envelope TEXT NOT NULL, created_at TEXT NOT NULL,
        PRIMARY KEY (name, version))""",
    """CREATE TABLE IF NOT EXISTS release_moves (
        name TEXT NOT NULL, alias TEXT NOT NULL, at TEXT NOT NULL, version TEXT NOT NULL,
        by_whom TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (name, alias, at))""",
    """CREATE TABLE IF NOT EXISTS release_traffic (
        name TEXT NOT NULL, at TEXT NOT NULL, weights TEXT NOT NULL, cause TEXT NOT NULL,
        PRIMARY KEY (name, at))""",
)
STABLE, CANARY = "stable", "canary"
_COLUMNS = "name, version, kind, source, stored, envelope, created_at"


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    kind: Kind
    source: str  # where it was added from
    stored: str  # where its content is kept
    envelope: str  # the DSSE envelope (JSON)
    created_at: str

    def to_json(self) -> dict[str, Any]:
        body = json.loads(unb64(json.loads(self.envelope)["payload"]))
        return {"name": self.name, "version": self.version, "kind": self.kind.value,
                "source": self.source, "created_at": self.created_at,
                "provenance": body["predicate"]}


def _now() -> str:
    return sortable_rfc3339(utc_now())


class Registry:
    def __init__(self, journal: SqlJournal, store: Path, signer: DeploymentKey,
                 trusted: list[Ed25519PublicKey] | None = None) -> None:
        self.journal, self.store, self.signer = journal, Path(store), signer
        self.trusted = trusted if trusted is not None else [signer.public_key]
        journal.create_schema(SCHEMA)

    # -- versions

    def add(self, kind: Kind, name: str, path: Path, by: str,
            inputs: dict[str, str] | None = None) -> Release:
        """A new version of `name` (the same content twice is the same version, returned)."""
        path = Path(path)
        have = self.kind_of(name)
        if have is not None and have is not kind:
            raise ReleaseError(f"{name} holds {have.value} releases, not {kind.value}")
        check_artifact(kind, path)
        version = content_digest(kind, path)
        existing = self._row(name, version)
        if existing is not None:
            return existing
        stored = self._keep(kind, path, version)
        at = _now()
        envelope = provenance.sign(provenance.statement(name, version, {
            "kind": kind.value, "by": by, "from": str(path.resolve()), "at": at,
            "inputs": dict(inputs or {})}), self.signer)
        self.journal.execute(f"INSERT INTO releases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (name, version, kind.value, str(path.resolve()), str(stored),
                              json.dumps(envelope), at))
        release = self._row(name, version)
        assert release is not None
        return release

    def _keep(self, kind: Kind, path: Path, version: str) -> Path:
        if kind is Kind.MODEL:
            return path.resolve()
        dest = self.store / version.replace(":", "-")
        if not dest.exists():
            self.store.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            if path.is_dir():
                shutil.copytree(path, tmp)
            else:
                shutil.copyfile(path, tmp)
            for f in [tmp, *tmp.rglob("*")] if tmp.is_dir() else [tmp]:
                if f.is_file():
                    f.chmod(0o444)  # immutable by intent; verify() catches it if not
            tmp.replace(dest)
        return dest

    def kind_of(self, name: str) -> Kind | None:
        rows = self.journal.query("SELECT kind FROM releases WHERE name = ? LIMIT 1", (name,))
        return Kind(rows[0][0]) if rows else None

    def _row(self, name: str, version: str) -> Release | None:
        rows = self.journal.query(f"SELECT {_COLUMNS} FROM releases WHERE name = ? AND "
                                  "version = ?", (name, version))
        return _release(rows[0]) if rows else None

    def get(self, name: str, ref: str) -> Release:
        """A version by its digest, a unique prefix of it (`sha256:1a2b…`, or the hex alone), or
        an alias."""
        alias = self.aliases(name).get(ref)
        if alias is not None:
            ref = alias
        hexed = ref if ref.startswith("sha256:") else "sha256:" + ref
        matches = [r for r in self.releases(name) if r.version.startswith(hexed)]
        if len(matches) != 1:
            what = "no" if not matches else f"{len(matches)}"
            error = UnknownRelease if not matches else ReleaseError
            raise error(f"{what} version of {name} matches {ref!r}")
        return matches[0]

    def releases(self, name: str | None = None) -> list[Release]:
        where, params = ("WHERE name = ?", (name,)) if name else ("", ())
        rows = self.journal.query(f"SELECT {_COLUMNS} FROM releases {where} "
                                  "ORDER BY name, created_at", params)
        return [_release(r) for r in rows]

    def verify(self, release: Release) -> dict[str, Any]:
        """The provenance statement, if it is trusted and the content is what it names;
        ReleaseError (nothing may serve it) otherwise."""
        statement = self._provenance(release)
        try:
            now = content_digest(release.kind, Path(release.stored))
        except ReleaseError as exc:
            raise ReleaseError(f"{release.name}@{release.version[:19]}: {exc}") from None
        self._same(release, now)
        return statement

    def verified_bytes(self, release: Release) -> bytes:
        """A one-file release's bytes, read once and verified (provenance, then the digest of
        the very bytes returned): what serves is what was checked."""
        self._provenance(release)
        try:
            data = Path(release.stored).read_bytes()
        except OSError as exc:
            raise ReleaseError(f"{release.name}@{release.version[:19]}: {exc}") from None
        self._same(release, "sha256:" + hashlib.sha256(data).hexdigest())
        return data

    def _provenance(self, release: Release) -> dict[str, Any]:
        return provenance.verified(json.loads(release.envelope), self.trusted, release.name,
                                   release.version)

    @staticmethod
    def _same(release: Release, now: str) -> None:
        if now != release.version:
            raise ReleaseError(f"{release.name}@{release.version[:19]}: its content changed "
                               f"since it was added (now {now[:19]}); refused")

    # -- aliases and traffic

    def move_alias(self, name: str, ref: str, alias: str, by: str, reason: str = "") -> Release:
        release = self.get(name, ref)
        self.verify(release)
        if not alias or alias.startswith("sha256:") or "@" in alias:
            raise ReleaseError(f"{alias!r} is not an alias name")
        self.journal.execute("INSERT INTO release_moves (name, alias, at, version, by_whom, "
                             "reason) VALUES (?, ?, ?, ?, ?, ?)",
                             (name, alias, _now(), release.version, by, reason or "moved"))
        return release

    def aliases(self, name: str) -> dict[str, str]:
        rows = self.journal.query("SELECT alias, version FROM release_moves WHERE name = ? "
                                  "ORDER BY at", (name,))
        return dict(rows)  # later moves overwrite earlier ones

    def moves(self, name: str) -> list[dict[str, str]]:
        rows = self.journal.query("SELECT alias, at, version, by_whom, reason FROM "
                                  "release_moves WHERE name = ? ORDER BY at", (name,))
        return [dict(zip(("alias", "at", "version", "by", "reason"), r, strict=True))
                for r in rows]

    def set_traffic(self, name: str, weights: Mapping[str, float], cause: str) -> None:
        """From now, `name`'s requests go to these versions in these shares."""
        self.journal.execute("INSERT INTO release_traffic (name, at, weights, cause) VALUES "
                             "(?, ?, ?, ?)", (name, _now(), json.dumps(dict(weights)), cause))

    def traffic_now(self, name: str) -> dict[str, float] | None:
        rows = self.journal.query("SELECT weights FROM release_traffic WHERE name = ? ORDER BY "
                                  "at DESC LIMIT 1", (name,))
        return json.loads(rows[0][0]) if rows else None

    def served(self, name: str, at: datetime) -> dict[str, Any] | None:
        """Which versions answered `name`'s traffic at `at`, in what shares, and since when."""
        rows = self.journal.query("SELECT at, weights, cause FROM release_traffic WHERE name "
                                  "= ? AND at <= ? ORDER BY at DESC LIMIT 1",
                                  (name, sortable_rfc3339(at)))
        if not rows:
            return None
        since, weights, cause = rows[0]
        return {"name": name, "at": sortable_rfc3339(at), "since": since,
                "weights": json.loads(weights), "cause": cause}


def _release(row: tuple[Any, ...]) -> Release:
    name, version, kind, source, stored, envelope, created_at = row
    return Release(name, version, Kind(kind), source, stored, envelope, created_at)
