"""A socket directory under a deep TMPDIR falls back to /tmp: the ipc endpoints put in it
must fit a unix socket's 107 bytes (xdist's and CI's temporary paths are long)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import zmq

from aruntime.ipc_dir import SUN_PATH_MAX, ipc_dir


@pytest.mark.parametrize("deep", [False, True])
def test_an_ipc_directory_leaves_room_for_its_sockets(tmp_path: Path, deep: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path.joinpath(*["a-longish-directory-name"] * 4) if deep else Path(
        tempfile.mkdtemp(prefix="s", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    made = ipc_dir("aruntime-test-")
    try:
        assert Path(made).parent == (Path("/tmp") if deep else root)
        endpoint = f"{made}/w12-replay"
        assert len(endpoint) <= SUN_PATH_MAX
        sock = zmq.Context.instance().socket(zmq.PULL)
        try:
            sock.bind(f"ipc://{endpoint}")  # binds: the path fits
        finally:
            sock.close(linger=0)
    finally:
        for name in os.listdir(made):
            os.unlink(os.path.join(made, name))
        os.rmdir(made)
        if not deep:
            root.rmdir()
