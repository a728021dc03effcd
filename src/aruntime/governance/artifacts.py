"""The content-addressed artifact store: payloads too large for a journal row, each named by the
sha256 of its bytes (`artifact:sha256:<hex>`), in `<root>/<hex[:2]>/<hex>`.

`put` writes a temporary file, fsyncs it, renames it into place and fsyncs the folder, so a
reader finds the whole artifact or none; the same bytes give the same name, so a second put is a
no-op. `get` hashes what it reads: a corrupt file is an error, never a wrong answer.

A subject's artifacts are stored sealed (the caller seals first, `SubjectKeys.seal`): the name is
the digest of the ciphertext and says nothing of the content, and shredding the subject's key
makes the bytes unreadable wherever a copy survives. Erasure also deletes the files; an unlink
does not scrub the disk's blocks, which is why the key, not the delete, is what erases.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from aruntime.fsutil import fsync_dir, write_atomic

REF_PREFIX = "artifact:sha256:"
REF_RE = re.compile(r"artifact:sha256:([0-9a-f]{64})")


class ArtifactError(Exception):
    """An artifact is missing or corrupt, or a reference is malformed."""


def is_ref(text: object) -> bool:
    return isinstance(text, str) and REF_RE.fullmatch(text) is not None


class ArtifactStore:
    """Artifacts under `root`, one file each; safe for many processes (writes are renames)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, ref: str) -> Path:
        match = REF_RE.fullmatch(ref) if isinstance(ref, str) else None
        if match is None:
            raise ArtifactError(f"not an artifact reference: {ref!r} "
                                "(expected 'artifact:sha256:<64 hex>')")
        hexdigest = match.group(1)
        return self.root / hexdigest[:2] / hexdigest

    def put(self, data: bytes) -> str:
        """Store `data`; its reference."""
        ref = REF_PREFIX + hashlib.sha256(data).hexdigest()
        path = self.path(ref)
        try:
            if path.stat().st_size == len(data):  # stored already; a wrong size is rewritten
                return ref
        except FileNotFoundError:
            pass
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, data)  # a racing put of the same bytes wrote the same file
        return ref

    def get(self, ref: str) -> bytes:
        """The artifact's bytes, checked against its name."""
        path = self.path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{ref}: no such artifact under {self.root}") from None
        actual = hashlib.sha256(data).hexdigest()
        if REF_PREFIX + actual != ref:
            raise ArtifactError(f"{ref}: corrupt; {path} hashes to sha256:{actual}")
        return data

    def head(self, ref: str, size: int) -> bytes:
        """The first `size` bytes, unchecked (b"" if missing): enough to tell a sealed header."""
        try:
            with open(self.path(ref), "rb") as f:
                return f.read(size)
        except FileNotFoundError:
            return b""

    def exists(self, ref: str) -> bool:
        return self.path(ref).exists()

    def delete(self, ref: str) -> bool:
        """Remove the artifact; whether it was there."""
        path = self.path(ref)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        return True

    def refs(self) -> Iterator[str]:
        """Every stored artifact's reference (temporary files of unfinished puts skipped)."""
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and len(folder.name) == 2:
                for file in sorted(folder.iterdir()):
                    if REF_RE.fullmatch(REF_PREFIX + file.name):
                        yield REF_PREFIX + file.name

    def refs_starting_with(self, prefix: bytes) -> list[str]:
        """The artifacts whose bytes begin with `prefix` (a scan: reads each file's head)."""
        return [ref for ref in self.refs() if self.head(ref, len(prefix)) == prefix]
