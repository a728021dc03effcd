"""A private directory for ipc:// sockets. A unix socket's path is at most 107 bytes, and a
deep TMPDIR (a test's, a CI runner's) leaves too few for the names put in it: the directory
is made under TMPDIR when it leaves room, else under /tmp."""

from __future__ import annotations

import tempfile

SUN_PATH_MAX = 107
ROOM = 40  # for the socket names put in it ("w12-replay", a core's "input"/"output")


def ipc_dir(prefix: str) -> str:
    made = tempfile.mkdtemp(prefix=prefix)
    if len(made) + ROOM <= SUN_PATH_MAX:
        return made
    import os

    os.rmdir(made)
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")
