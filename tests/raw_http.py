"""A raw HTTP/1.1 client for the hostile-input tests: what httpx will not send (a head without
its body, a body that stops), and reading a response while a request is still being sent."""

from __future__ import annotations

import json
import select
import socket
import threading
from typing import Any

MiB = 1024 * 1024


def connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=60)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    return sock


def head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, Any]:
    """The status and JSON body of the next response (its Content-Length says where it ends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    status = int(top.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in top.split(b"\r\n")[1:]
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-response"
        rest += chunk
    return status, json.loads(rest[:length])


def stream_chunked(sock: socket.socket, prefix: bytes, total: int, hold_at: int = 0,
                   reached: threading.Event | None = None,
                   release: threading.Event | None = None) -> int:
    """Send `prefix` then spaces in 1 MiB chunks up to `total` bytes, stopping as soon as a
    response is readable; at `hold_at` bytes, set `reached` and wait for `release`. Returns
    the bytes sent."""
    sock.sendall(b"%x\r\n%s\r\n" % (len(prefix), prefix))
    sent = len(prefix)
    piece = b" " * MiB
    while sent < total:
        if reached is not None and release is not None and sent >= hold_at:
            reached.set()
            assert release.wait(60)
        if select.select([sock], [], [], 0)[0]:
            return sent  # the server has answered
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sent += len(piece)
    sock.sendall(b"0\r\n\r\n")
    return sent
