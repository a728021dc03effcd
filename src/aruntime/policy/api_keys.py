"""API keys: `ark_<id>_<secret>`, shown once at creation; the store keeps the id, whose key it is
(tenant, principal, roles) and a salted hash of the secret, never the secret.

The secret is 256 random bits, so a fast keyed hash is enough (no password stretching: nothing
to brute-force): HMAC-SHA256 under a per-key random salt, compared in constant time. Lookup is
by the id, so a wrong key costs one indexed read and one HMAC. Every request reads the key's row
(about 20 µs on SQLite here), so a revocation holds from the next request, in every process that
shares the file — no cache to go stale.

The store is `keys.db` in the data directory, beside the journal (`runs.db`): its own SQLite file,
so that copying or sharing the journal never copies credentials with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from aruntime.contracts.base import NAME_RE
from aruntime.policy.identity import Authenticator, AuthError, Principal, bearer_token
from aruntime.timeutil import rfc3339, utc_now

KEYS_FILE = "keys.db"
_KEY_RE = re.compile(r"^ark_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
SCHEMA = """CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, principal TEXT NOT NULL,
    roles TEXT NOT NULL, salt BLOB NOT NULL, digest BLOB NOT NULL,
    created_at TEXT NOT NULL, revoked_at TEXT)"""


class Secret(str):
    """A key as created: its repr and str in logs never show it (STYLE 12); `reveal()` does."""

    def __repr__(self) -> str:
        return "Secret('ark_…')"

    def reveal(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    principal: str
    roles: tuple[str, ...]
    created_at: str
    revoked_at: str | None = None


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode("ascii"), hashlib.sha256).digest()


def check_name(what: str, value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{what} {value!r}: must be 1-128 of [A-Za-z0-9_.:@-], starting alnum")
    return value


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(SCHEMA)
        self.path.chmod(0o600)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def create(self, tenant: str, principal: str,
               roles: tuple[str, ...] = ()) -> tuple[KeyRecord, Secret]:
        for role in roles:
            check_name("role", role)
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        if not NAME_RE.match(tenant):  # what a request contract's tenant must be
            raise ValueError(f"tenant {tenant!r}: must be 1-64 of [A-Za-z0-9_.:-], starting alnum")
        record = KeyRecord(key_id, tenant,
                           check_name("principal", principal), tuple(sorted(set(roles))),
                           rfc3339(utc_now()))
        with self._conn() as conn:
            conn.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                         (key_id, tenant, principal, json.dumps(record.roles), salt,
                          _digest(salt, secret), record.created_at))
        return record, Secret(f"ark_{key_id}_{secret}")

    def list(self) -> list[KeyRecord]:
        rows = self._conn().execute(
            "SELECT key_id, tenant, principal, roles, created_at, revoked_at FROM api_keys "
            "ORDER BY created_at, key_id").fetchall()
        return [KeyRecord(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5]) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Whether a live key of that id was revoked now."""
        with self._conn() as conn:
            cur = conn.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND "
                               "revoked_at IS NULL", (rfc3339(utc_now()), key_id))
        return cur.rowcount == 1

    def check(self, key: str) -> KeyRecord:
        """The live key's record; AuthError (never naming the key) otherwise."""
        match = _KEY_RE.match(key)
        row = None if match is None else self._conn().execute(
            "SELECT tenant, principal, roles, salt, digest, created_at, revoked_at "
            "FROM api_keys WHERE key_id = ?", (match[1],)).fetchone()
        if match is None or row is None or not hmac.compare_digest(
                _digest(row[3], match[2]), row[4]):
            raise AuthError("invalid API key")
        if row[6] is not None:
            raise AuthError(f"API key {match[1]} was revoked at {row[6]}")
        return KeyRecord(match[1], row[0], row[1], tuple(json.loads(row[2])), row[5])


class KeyAuth(Authenticator):
    """`serve --auth keys`: `Authorization: Bearer ark_…` names the principal."""

    scheme = "keys"

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def authenticate(self, authorization: str | None) -> Principal:
        record = self.store.check(bearer_token(authorization))
        return Principal(record.principal, record.tenant, frozenset(record.roles), "key",
                         record.key_id)
