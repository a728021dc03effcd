"""The deployment's Ed25519 key. The server signs each evidence record's hash with it, so that a
log copied off the machine can be checked by anyone holding only the public key.

On disk: the private key as unencrypted PKCS8 PEM, mode 0600 (`keys/evidence-ed25519.pem` under
the data directory), and its public key beside it (`evidence-ed25519.pub.pem`) for verifiers.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aruntime import paths
from aruntime.fsutil import fsync_dir, write_atomic, write_temp

logger = logging.getLogger(__name__)

KEY_FILENAME = "evidence-ed25519.pem"
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{86}")  # 64 bytes, base64url without padding


class SigningError(Exception):
    """A key file is missing, unreadable or not an Ed25519 key."""


def default_key_path(data_dir: Path | None = None) -> Path:
    return Path(data_dir or paths.data_dir()) / "keys" / KEY_FILENAME


def public_key_path(private_path: Path) -> Path:
    """`evidence-ed25519.pem` -> `evidence-ed25519.pub.pem`, in the same folder."""
    return private_path.with_name(private_path.name.removesuffix(".pem") + ".pub.pem")


def key_id(public_key: Ed25519PublicKey) -> str:
    """`ed25519:` and the first 16 hex digits of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(source: Path | str | bytes) -> Ed25519PublicKey:
    """A public key from a PEM file (a Path) or from PEM text."""
    name = str(source) if isinstance(source, Path) else "public key"
    try:
        pem = source.read_bytes() if isinstance(source, Path) else _as_bytes(source)
        key = serialization.load_pem_public_key(pem)
    except OSError as exc:
        raise SigningError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise SigningError(f"{name}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{name}: not an Ed25519 public key")
    return key


def verify_signature(public_key: Ed25519PublicKey, data: bytes, signature: str) -> bool:
    """Whether `signature` (base64url, as `DeploymentKey.sign` writes it) signs `data`."""
    if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
        return False
    raw = base64.urlsafe_b64decode(signature + "==")
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != signature:
        return False  # one signature, one spelling: the last character's spare bits are zero
    try:
        public_key.verify(raw, data)
    except InvalidSignature:
        return False
    return True


class DeploymentKey:
    """One Ed25519 private key and where it lives (None for a key held only in memory)."""

    __slots__ = ("key_id", "path", "private_key", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self.private_key = private_key
        self.path = path
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> DeploymentKey:
        """A fresh key that is never written (tests, one-off signing)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> DeploymentKey:
        """The key at `path`, which must exist (SigningError otherwise): a signing key named
        on a command line is never created by the command."""
        return cls(_load_private(Path(path)), Path(path))

    @classmethod
    def load_or_create(cls, path: Path | None = None) -> DeploymentKey:
        """Load the key at `path` (default: the data directory's), creating it first if it is
        missing, and make sure its public key file beside it is current."""
        path = Path(path) if path is not None else default_key_path()
        if not path.exists():
            _create_if_absent(path)
        key = cls(_load_private(path), path)
        key.write_public(public_key_path(path))
        return key

    def sign(self, data: bytes) -> str:
        """The Ed25519 signature of `data`, base64url without padding (86 characters)."""
        return base64.urlsafe_b64encode(self.private_key.sign(data)).rstrip(b"=").decode("ascii")

    def public_pem(self) -> str:
        return public_pem(self.public_key)

    def write_public(self, path: Path) -> None:
        """Write the public key PEM to `path` unless it already holds exactly that."""
        pem = self.public_pem().encode("ascii")
        try:
            if path.read_bytes() == pem:
                return
        except FileNotFoundError:
            pass
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, pem, 0o644)


def _as_bytes(text: str | bytes) -> bytes:
    return text.encode("ascii", "replace") if isinstance(text, str) else text


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        pem = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        reason = exc.strerror or exc
        raise SigningError(f"{path}: cannot read the deployment key: {reason}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key")
    if mode & 0o077:
        logger.warning("%s is readable by other users (mode %o); it should be 0600",
                       path, mode & 0o777)
    return key


def _create_if_absent(path: Path) -> None:
    """Write a new key to a private temporary file, then hard-link it into place: the link is
    atomic and never replaces a key that another process created first (that one wins, and
    both processes then load it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    tmp = write_temp(path, pem, 0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
