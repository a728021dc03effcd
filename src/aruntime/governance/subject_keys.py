"""Per-subject data keys: the lever of crypto-shredding.

Whatever holds a subject's data (a memory value, a run's journal payloads, an artifact) is sealed
with that subject's own AES-256-GCM key. Shredding the key makes every copy unreadable at once,
including copies no delete can reach: replicas, backups, old WAL frames.

The keys live in `subject_keys` in the journal's database, one row per subject, named by the
subject's digest (HMAC-SHA256 under a random per-database salt, `subject_salt`), never by the
subject itself. They are stored unwrapped here; a deployment would wrap each one with a KMS key
(envelope encryption) so that a copy of the database alone opens nothing. That is out of scope.

A sealed payload is text, `sealed:v1:<subject digest>:<base64url(nonce | ciphertext | tag)>`. The
digest and an optional caller context (e.g. the memory item's scope) are the associated data, so
a payload relabelled for another subject or moved to another place fails to open.

A shredded subject stays shredded: its row is kept with the key gone, and `seal` refuses it, so a
run still going when its subject is erased fails instead of writing new data under a fresh key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aruntime.contracts.base import canonical_json
from aruntime.durable.journal import SqlJournal
from aruntime.timeutil import rfc3339, utc_now

SEALED_PREFIX = "sealed:v1:"
_SEALED = re.compile(r"^sealed:v1:(hmac-sha256:[0-9a-f]{64}):([A-Za-z0-9_-]+)$")
_NONCE = 12
_AAD = b"aruntime.sealed/v1\x00"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS subject_keys (
        subject TEXT PRIMARY KEY, key TEXT, created_at TEXT NOT NULL, shredded_at TEXT)""",
    "CREATE TABLE IF NOT EXISTS subject_salt (id INTEGER PRIMARY KEY, salt TEXT NOT NULL)",
)


class ShreddedError(Exception):
    """The subject's key is gone (shredded, or never created here): its data cannot be opened."""


class SealedDataError(ValueError):
    """Not a sealed payload, or one that was altered or opened in another context."""


@dataclass(frozen=True, slots=True)
class ShredRecord:
    """What a shred did; it carries no key material."""

    subject_digest: str
    shredded_at: str
    had_key: bool  # False: the subject had no live key (never sealed anything, or shredded)


def is_sealed(text: object) -> bool:
    """Whether `text` is a sealed payload (by its prefix; `open` checks the rest)."""
    return isinstance(text, str) and text.startswith(SEALED_PREFIX)


def _parse(sealed: str) -> tuple[str, bytes]:
    match = _SEALED.match(sealed) if isinstance(sealed, str) else None
    if match is None:
        raise SealedDataError("not a sealed payload (expected 'sealed:v1:<digest>:<base64url>')")
    body = _unb64(match.group(2))
    if len(body) < _NONCE + 16:
        raise SealedDataError("sealed payload is truncated")
    return match.group(1), body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SubjectKeys:
    """The subjects' keys, in a table of `journal`'s database. No key is cached in the process:
    a shred by any process holds for every other from its next call."""

    def __init__(self, journal: SqlJournal) -> None:
        self.journal = journal
        journal.create_schema(SCHEMA)
        journal.execute("INSERT INTO subject_salt (id, salt) VALUES (1, ?) ON CONFLICT DO NOTHING",
                        (_b64(secrets.token_bytes(32)),))
        salt: str = journal.query("SELECT salt FROM subject_salt WHERE id = 1")[0][0]
        self._salt = _unb64(salt)

    is_sealed = staticmethod(is_sealed)

    def digest(self, subject: str) -> str:
        """The subject's stable pseudonym, `hmac-sha256:<hex>`: keyed, so a guessable subject id
        (an email address) cannot be confirmed from it without this database's salt."""
        if not isinstance(subject, str) or not subject:
            raise ValueError("subject must be a non-empty string")
        mac = hmac.new(self._salt, canonical_json(["aruntime.subject/v1", subject]), hashlib.sha256)
        return "hmac-sha256:" + mac.hexdigest()

    def seal(self, subject: str, plaintext: bytes, context: bytes = b"") -> str:
        """Encrypt `plaintext` under the subject's key, creating the key on first use. `context`
        must be given again to `open`. Raises ShreddedError for an erased subject."""
        sid = self.digest(subject)
        key = self._key(sid, create=True)
        nonce = secrets.token_bytes(_NONCE)
        body = nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(sid, context))
        return f"{SEALED_PREFIX}{sid}:{_b64(body)}"

    def open(self, sealed: str, context: bytes = b"") -> bytes:
        """The plaintext of a sealed payload. ShreddedError if its subject's key is gone,
        SealedDataError if it is malformed, altered or given another context."""
        sid, body = _parse(sealed)
        key = self._key(sid, create=False)
        try:
            return AESGCM(key).decrypt(body[:_NONCE], body[_NONCE:], _aad(sid, context))
        except InvalidTag:
            raise SealedDataError(f"sealed payload for {sid} was altered, or its context "
                                  "differs") from None

    def shred(self, subject: str) -> ShredRecord:
        """Destroy the subject's key (the row stays, key NULL, so the subject stays erased).
        Idempotent. The journal's SQLite connections zero the old row (secure_delete); its WAL
        still holds old frames until checkpointed (`erasure.erase_subject` does that)."""
        sid, now = self.digest(subject), rfc3339(utc_now())
        had_key = self.journal.execute(
            "UPDATE subject_keys SET key = NULL, shredded_at = ? "
            "WHERE subject = ? AND key IS NOT NULL", (now, sid)) == 1
        self.journal.execute("INSERT INTO subject_keys (subject, key, created_at, shredded_at) "
                             "VALUES (?, NULL, ?, ?) ON CONFLICT DO NOTHING", (sid, now, now))
        return ShredRecord(subject_digest=sid, shredded_at=now, had_key=had_key)

    def is_shredded(self, subject: str) -> bool:
        rows = self.journal.query("SELECT key FROM subject_keys WHERE subject = ?",
                                  (self.digest(subject),))
        return bool(rows) and rows[0][0] is None

    def _key(self, sid: str, create: bool) -> bytes:
        rows = self.journal.query("SELECT key FROM subject_keys WHERE subject = ?", (sid,))
        if not rows and create:  # two processes may race here: the first insert stands
            self.journal.execute("INSERT INTO subject_keys (subject, key, created_at) "
                                 "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                                 (sid, _b64(AESGCM.generate_key(256)), rfc3339(utc_now())))
            rows = self.journal.query("SELECT key FROM subject_keys WHERE subject = ?", (sid,))
        if not rows:
            raise ShreddedError(f"no key for subject {sid} in this database")
        if rows[0][0] is None:
            raise ShreddedError(f"subject {sid} was erased: its key is shredded")
        text: str = rows[0][0]
        return _unb64(text)


def _aad(sid: str, context: bytes) -> bytes:
    return _AAD + sid.encode("ascii") + b"\x00" + context
