"""A throwaway real PostgreSQL server for tests: initdb into a temp dir, its own port on
127.0.0.1, fsync on, stopped and deleted afterwards.

initdb and postgres refuse to run as root, and CI runs as root: then both run as `nobody`
(Popen's user/group, so no su/runuser is needed) in a temp dir handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from redis_server import free_port


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} is not installed: apt-get install postgresql")
    return found


def _as_unprivileged(data_root: Path) -> dict[str, Any]:
    """Popen arguments that drop root to `nobody`, who then owns `data_root`; none otherwise."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("nobody")
    os.chown(data_root, user.pw_uid, user.pw_gid)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": str(data_root), "USER": "nobody"}}


def _connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=2)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield `postgresql://postgres@127.0.0.1:PORT/postgres` of a fresh server (trust auth)."""
    root = Path(tempfile.mkdtemp(prefix="aruntime-pg-"))
    data, log = root / "data", root / "server.log"
    drop = _as_unprivileged(root)
    proc: subprocess.Popen[bytes] | None = None
    try:
        init = subprocess.run(
            [_binary("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
             "--no-locale", "-E", "UTF8", "--no-instructions"],
            check=False, cwd=root, capture_output=True, text=True, timeout=120, **drop)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [_binary("postgres"), "-D", str(data), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1",
                 "-c", "unix_socket_directories=",  # TCP only: no socket in /var/run
                 "-c", "fsync=on", "-c", "synchronous_commit=on",
                 "-c", "shared_buffers=16MB", "-c", "max_connections=64"],
                cwd=root, stdout=out, stderr=subprocess.STDOUT, **drop)
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        while True:  # wait for the server to answer, not for a fixed time
            try:
                _connect(url).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start on port {port}:\n"
                                       f"{log.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.02)
        yield url
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGQUIT)  # immediate shutdown: the data is deleted next
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server; its URL. Left for the server's teardown to delete."""
    name = f"j_{uuid.uuid4().hex[:16]}"
    with _connect(server_url) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"
