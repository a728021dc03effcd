"""Asking a cache directory from another process (a router, say): one DEALER socket, msgpack.

The wire is plain: a request {keys: [bytes], nonce} and a reply {nonce, matches: [{worker_id,
tier, num_blocks, by_tier}], error}, each after an empty delimiter frame (REQ-compatible), so a
client needs only ZeroMQ and msgpack.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any, Self

import msgspec
import zmq

from aruntime.kv.directory_index import PrefixMatch


class PrefixQuery(msgspec.Struct):
    keys: list[bytes]
    nonce: int = 0


class PrefixReply(msgspec.Struct):
    nonce: int
    matches: list[PrefixMatch]
    error: str | None = None


class DirectoryError(RuntimeError):
    """The directory could not answer a query."""


_encoder = msgspec.msgpack.Encoder()
_reply_decoder = msgspec.msgpack.Decoder(PrefixReply)


class DirectoryClient:
    """Asks a CacheDirectory's query endpoint, from any process. One thread at a time."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(addr)
        self._nonces = itertools.count(1)

    def longest_prefix(self, keys: Sequence[bytes], timeout_s: float = 1.0) -> list[PrefixMatch]:
        nonce = next(self._nonces)
        self._sock.send_multipart([b"", _encoder.encode(PrefixQuery([bytes(k) for k in keys],
                                                                    nonce))])
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self._sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                break
            reply = _reply_decoder.decode(self._sock.recv_multipart()[-1])
            if reply.nonce != nonce:
                continue  # the late answer to a query that timed out
            if reply.error is not None:
                raise DirectoryError(reply.error)
            return reply.matches
        raise TimeoutError(f"the cache directory at {self.addr} did not answer in {timeout_s}s")

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
