"""`aruntime serve` as a real process on a free port, for the tests that need one (a sealed
model, a controller killed mid-rollout): started, then polled until /health answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], port: int, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "aruntime.cli", "serve", "--port", str(port),
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def wait_healthy(proc: subprocess.Popen[str], port: int, timeout_s: float = 90.0) -> str:
    """The server's URL once /health answers; fails with its stderr if it exits first."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the server did not start in time"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            time.sleep(0.2)  # another process's port: nothing to wait on but polling
