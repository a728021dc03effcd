"""One server per data directory: `aruntime serve` claims the directory before it loads a model,
so a second server on it stops at once with one line instead of failing after the load.

The claim is an exclusive `flock` on `serve.lock` in the directory, held for the life of the
process (the kernel drops it when the process dies, however it dies); the file names the
holder's pid, so the refusal can say which process to look at.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "serve.lock"


class DataDirInUseError(RuntimeError):
    """Another live process serves from this data directory."""


class DataDirClaim:
    """The held claim; `release` (or process exit) gives it up."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUseError(
                f"data directory {self.directory} is in use by another aruntime serve "
                f"(pid {holder}); stop that one, or give this one another with --data-dir DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also drops the flock
            self._fd = -1
