"""Policy bundles, what `aruntime serve --policy PATH` loads: a `.cedar` file, or a directory of
`.cedar` files with an optional `schema.cedarschema` (else the built-in schema).

A bundle's version is a digest over its files, names and bytes (canonical JSON of each name's
sha256), so the version an evidence record names is the bundle that decided, byte for byte; its
signature (bundle_signature.py) is over that digest. Loading refuses, with a PolicyError naming
the file, a bundle that cannot be read, does not parse, does not validate against its schema, or
whose signature is refused. Only top-level files count; hidden ones (an editor's) are skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cedarpy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.contracts.base import sha256_digest
from aruntime.policy.bundle_signature import UNSIGNED, check_signature
from aruntime.policy.cedar_authorizer import CedarPolicy, PolicyError

FORMAT = "aruntime.policy-bundle/v1"
SCHEMA_FILE = "schema.cedarschema"
SIGNATURE_FILE = "bundle.sig"


def signature_path(path: Path) -> Path:
    """`PATH/bundle.sig` for a directory, `FILE.cedar.sig` for a file."""
    return path / SIGNATURE_FILE if path.is_dir() else path.with_name(path.name + ".sig")


def read_files(path: Path) -> dict[str, bytes]:
    """The bundle's files by name, in name order."""
    try:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and (p.suffix == ".cedar" or p.name == SCHEMA_FILE))
            if not any(p.suffix == ".cedar" for p in found):
                raise PolicyError(f"{path}: no .cedar files in the directory")
        elif path.is_file():
            if path.suffix != ".cedar":
                raise PolicyError(f"{path}: not a .cedar file nor a directory of them")
            found = [path]
        else:
            raise PolicyError(f"{path}: no such file or directory")
        return {p.name: p.read_bytes() for p in found}
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror or exc}") from None


def bundle_digest(files: dict[str, bytes]) -> str:
    return sha256_digest({"format": FORMAT, "files": {
        name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in files.items()}})


@dataclass(frozen=True)
class PolicyBundle:
    path: Path
    policy: CedarPolicy
    files: tuple[str, ...]
    signature: str  # "unsigned", or who signed it and whether that was verified

    @property
    def version(self) -> str:
        return self.policy.version

    @property
    def signed(self) -> bool:
        return self.signature != UNSIGNED

    def describe(self) -> str:
        return (f"{self.path}: {self.policy.size} policies in {len(self.files)} file(s), "
                f"version {self.version}, {self.signature}")


def load_bundle(path: Path, trusted: Ed25519PublicKey | None = None) -> PolicyBundle:
    """Read, check the signature of (against `trusted`, when given), parse and validate the
    bundle at `path`. PolicyError (SignatureError for the signature) when it is refused."""
    path = Path(path)
    files = read_files(path)
    digest = bundle_digest(files)
    signature = check_signature(signature_path(path), digest, trusted)
    return PolicyBundle(path, parse_files(path, files, digest), tuple(files), signature)


def parse_files(path: Path, files: dict[str, bytes], digest: str) -> CedarPolicy:
    """The policy set of a bundle's files, validated against its schema (or the built-in one),
    known by the bundle's digest."""
    texts = {name: _text(path, name, data) for name, data in files.items()}
    schema = texts.pop(SCHEMA_FILE, None)
    policy_text = "\n".join(texts.values())  # a file's last line may be a comment
    try:
        return CedarPolicy.parse(policy_text, schema, source=str(path), version=digest)
    except PolicyError:
        _name_the_file(path, texts)
        raise


def _text(path: Path, name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path / name if path.is_dir() else path}: not UTF-8 text "
                          f"(byte {exc.start})") from None


def _name_the_file(path: Path, texts: dict[str, str]) -> None:
    """For a directory whose policies do not parse: raise the error of the first file that does
    not parse alone, under its own name (positions are then the file's own)."""
    if len(texts) < 2:
        return
    for name, text in texts.items():
        try:
            cedarpy.PolicySet.from_str(text)
        except ValueError as exc:
            raise PolicyError(f"{path / name}: {exc}") from None
