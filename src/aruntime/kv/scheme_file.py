"""A store directory's announcement of the key scheme its blocks follow (`scheme.json`), and what
becomes of a directory whose announcement cannot be read."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from aruntime.kv.block_format import KeySchemeMismatchError, scheme_descriptor
from aruntime.kv.keys import KeyScheme
from aruntime.timeutil import utc_now

logger = logging.getLogger(__name__)


def claim_scheme_file(path: Path, scheme: KeyScheme) -> None:
    """Announce `scheme` in `path`, or check the scheme already there. Workers starting together
    race for it: the first link wins, the others compare (a rename would let the last win).

    Metadata that cannot be read (damaged bytes, not a scheme) is no reason not to serve: the
    directory's blocks are set aside with it (`quarantine_blocks`) and the tier starts empty.
    A readable scheme of another model is a KeySchemeMismatchError: its blocks may be wanted."""
    descriptor = scheme_descriptor(scheme)
    for _ in range(3):  # another worker may quarantine or create the file between our looks
        if not path.exists() and _link_new(path, descriptor):
            return
        found = _read_descriptor(path)
        if found is _MISSING:
            continue
        if found is None:
            quarantine_blocks(path)
            continue
        if found != descriptor:
            raise KeySchemeMismatchError(
                f"{path.parent} holds KV blocks of scheme {found}, not {descriptor}; "
                "use another --kv-disk-dir for this model")
        return
    raise KeySchemeMismatchError(f"{path}: the scheme file keeps changing under this process")


_MISSING: Any = object()


def _link_new(path: Path, descriptor: dict[str, object]) -> bool:
    """Create `path` holding `descriptor` unless it exists; whether this call created it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".scheme-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(descriptor, sort_keys=True))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _read_descriptor(path: Path) -> Any:
    """The scheme announced in `path`; None when it cannot be read as one, _MISSING when the
    file is gone."""
    try:
        found = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return _MISSING
    except (UnicodeDecodeError, ValueError):
        return None
    fields = {f.name for f in dataclasses.fields(KeyScheme)}
    return found if isinstance(found, dict) and set(found) == fields else None


def quarantine_blocks(scheme_path: Path) -> Path | None:
    """Move an unreadable scheme file and every block beside it into a new `quarantine-*`
    directory there (nothing is deleted: an operator may look). None when another process
    moved the scheme file first."""
    root = scheme_path.parent
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    dest = root / f"quarantine-{stamp}-{os.getpid()}-{secrets.token_hex(3)}"
    dest.mkdir()
    try:
        os.rename(scheme_path, dest / scheme_path.name)
    except FileNotFoundError:
        dest.rmdir()
        return None
    moved = 0
    for block in root.glob("*.kv"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(block, dest / block.name)
            moved += 1
    logger.warning("%s is unreadable: set it and %d KV blocks aside in %s; this tier starts "
                   "empty", scheme_path, moved, dest)
    return dest
