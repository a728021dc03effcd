"""Model weights sealed at rest: each weight file encrypted under one fresh AES-256-GCM data key,
in chunks, and a manifest (`sealed.json`) that names the key broker's resource holding the key
and the plaintext's digests. The key never sits beside the weights: `aruntime seal-model` gives
it to the broker only, and a boundary gets it back (RCAR) after attesting.

A chunk's nonce is (file index, chunk index) — unique because the key is used for this one
sealing — and its associated data names the file, the chunk and whether it is the last, so a
chunk cannot be moved, dropped or a file cut short without the tag failing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aruntime.jsonfile import read_json_object

MANIFEST = "sealed.json"
FORMAT = "aruntime.sealed-model/v1"
SUFFIX = ".sealed"
CHUNK_BYTES = 1 << 20
_TAG = 16


class SealedModelError(ValueError):
    """A sealed model that cannot be opened: a bad manifest, a wrong key, altered bytes."""


@dataclass(frozen=True)
class SealedFile:
    name: str  # the plaintext file's name, e.g. model.safetensors
    sha256: str  # of the plaintext
    size: int


@dataclass(frozen=True)
class Manifest:
    resource: str  # repo/type/tag at the key broker
    revision: str  # the plaintext checkpoint's revision digest (engine/loader.py's)
    files: tuple[SealedFile, ...]
    chunk_bytes: int = CHUNK_BYTES

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "resource": self.resource, "revision": self.revision,
                "cipher": "AES-256-GCM", "chunk_bytes": self.chunk_bytes,
                "files": [{"name": f.name, "sha256": f.sha256, "size": f.size}
                          for f in self.files]}

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        raw = read_json_object(path, SealedModelError)
        if raw.get("format") != FORMAT:
            raise SealedModelError(f"{path}: format is not {FORMAT}")
        try:
            files = tuple(SealedFile(str(f["name"]), str(f["sha256"]), int(f["size"]))
                          for f in raw["files"])
            manifest = cls(str(raw["resource"]), str(raw["revision"]), files,
                           int(raw["chunk_bytes"]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise SealedModelError(f"{path} is not a sealed-model manifest: {exc}") from None
        for f in files:
            if Path(f.name).name != f.name or not f.name.endswith(".safetensors"):
                raise SealedModelError(f"{path}: {f.name!r} is not a weight file's name")
        if not files or manifest.chunk_bytes < 1:
            raise SealedModelError(f"{path}: no files, or no chunk size")
        return manifest

    def sealed_paths(self, directory: Path) -> list[Path]:
        return [directory / (f.name + SUFFIX) for f in self.files]


def _nonce(file_index: int, chunk_index: int) -> bytes:
    return file_index.to_bytes(4, "big") + chunk_index.to_bytes(8, "big")


def _aad(name: str, chunk_index: int, last: bool) -> bytes:
    return f"{FORMAT}\0{name}\0{chunk_index}\0{int(last)}".encode()


def _chunks(data: bytes | memoryview, size: int) -> Iterator[tuple[int, bytes, bool]]:
    count = max(1, -(-len(data) // size))
    for i in range(count):
        yield i, bytes(data[i * size:(i + 1) * size]), i == count - 1


def seal_file(source: Path, dest: Path, key: bytes, file_index: int,
              chunk_bytes: int = CHUNK_BYTES) -> SealedFile:
    """`source` encrypted to `dest` (written whole, then renamed into place)."""
    aead, digest, size = AESGCM(key), hashlib.sha256(), 0
    tmp = dest.with_name(dest.name + ".part")
    with source.open("rb") as src, tmp.open("wb") as out:
        index, chunk = 0, src.read(chunk_bytes)
        while True:
            following = src.read(chunk_bytes)
            last = not following
            digest.update(chunk)
            size += len(chunk)
            out.write(aead.encrypt(_nonce(file_index, index), chunk,
                                   _aad(source.name, index, last)))
            if last:
                break
            index, chunk = index + 1, following
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(dest)
    return SealedFile(source.name, "sha256:" + digest.hexdigest(), size)


def open_file(sealed: bytes, entry: SealedFile, key: bytes, file_index: int,
              chunk_bytes: int) -> bytearray:
    """The plaintext of one sealed file, in memory; SealedModelError if any chunk is wrong."""
    aead, out = AESGCM(key), bytearray()
    try:
        for i, chunk, last in _chunks(sealed, chunk_bytes + _TAG):
            out += aead.decrypt(_nonce(file_index, i), chunk, _aad(entry.name, i, last))
    except (InvalidTag, ValueError):
        raise SealedModelError(f"{entry.name}{SUFFIX} does not open with the released key "
                               "(a wrong key, or altered or truncated bytes)") from None
    if len(out) != entry.size or "sha256:" + hashlib.sha256(out).hexdigest() != entry.sha256:
        raise SealedModelError(f"{entry.name}{SUFFIX} opens to other bytes than were sealed")
    return out
