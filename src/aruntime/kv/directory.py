"""The cache directory: follows the KV event publishers of N workers and answers, for a prompt's
block keys, which worker holds the longest prefix and in which tier — locally, or over a query
socket for a router in another process (DirectoryClient).

One thread owns every socket: a SUB per publisher (so each knows its replay endpoint), replays in
flight (DEALER), the query server (ROUTER) and a wake-up socket; each tick it also expires lapsed
leases. A replay never blocks that thread: its replies are read as they arrive.

Per publisher: a batch with seq = last + 1 is applied; seq <= last is a duplicate or a heartbeat;
a batch further ahead, or a heartbeat naming a seq we lack, starts a replay from last + 1. If
that history is gone (the publisher's ring moved on, or it has no replay endpoint), the worker's
blocks are forgotten and rebuilt from what comes next: a forgotten block costs a cache miss, a
stale one would send requests to a worker that no longer holds it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import msgspec
import zmq

from aruntime.kv.block_format import KeySchemeMismatchError
from aruntime.kv.directory_client import (
    DirectoryClient,
    DirectoryError,
    PrefixQuery,
    PrefixReply,
)
from aruntime.kv.directory_index import SHARED_WORKER, DirectoryIndex, PrefixMatch
from aruntime.kv.keys import BlockKey, KeyScheme
from aruntime.kv.publisher import (
    END_SEQ,
    AnnouncedBatch,
    batch_decoder,
    decode_seq,
    encode_seq,
)

__all__ = ["SHARED_WORKER", "CacheDirectory", "DirectoryClient", "DirectoryError", "PrefixMatch"]

logger = logging.getLogger(__name__)


_encoder = msgspec.msgpack.Encoder()
_query_decoder = msgspec.msgpack.Decoder(PrefixQuery)


@dataclass(slots=True, eq=False)
class _Link:
    """One publisher as the directory follows it."""

    endpoint: str
    replay_endpoint: str | None
    sub: zmq.Socket[Any]
    worker_id: str | None = None
    epoch: str | None = None
    last_seq: int = -1
    refused: Exception | None = None
    replay: zmq.Socket[Any] | None = None
    replay_deadline: float = 0.0


class CacheDirectory:
    """`publishers`: (endpoint, replay endpoint or None) pairs to connect to; more can be added
    later with `add_publisher`. `query_endpoint`: where to answer DirectoryClient (bind address).
    `scheme`: the key scheme to accept; when None the first worker's scheme is pinned."""

    def __init__(self, publishers: Iterable[tuple[str, str | None]] = (), *,
                 query_endpoint: str | None = None, scheme: KeyScheme | None = None,
                 tick_s: float = 0.1, replay_timeout_s: float = 2.0, topic: bytes = b"",
                 rcvhwm: int = 100_000) -> None:
        self.index = DirectoryIndex(scheme)
        self.refused: dict[str, Exception] = {}  # worker id -> why (KeySchemeMismatchError)
        self.replays = 0  # replays started
        self.tick_s = tick_s
        self.replay_timeout_s = replay_timeout_s
        self.topic = topic
        self.rcvhwm = rcvhwm
        self._pending: queue.Queue[tuple[str, str | None]] = queue.Queue()
        for endpoint, replay_endpoint in publishers:
            self._pending.put((endpoint, replay_endpoint))
        self._ctx: zmq.Context[Any] = zmq.Context()
        wake = f"inproc://aruntime-directory-{id(self)}"
        self._wake_rx = self._ctx.socket(zmq.PULL)
        self._wake_rx.bind(wake)
        self._wake_tx = self._ctx.socket(zmq.PUSH)
        self._wake_tx.setsockopt(zmq.LINGER, 0)
        self._wake_tx.connect(wake)
        self._wake_lock = threading.Lock()
        self._query: zmq.Socket[Any] | None = None
        self.query_endpoint: str | None = None
        if query_endpoint is not None:
            self._query = self._ctx.socket(zmq.ROUTER)
            self._query.setsockopt(zmq.LINGER, 0)
            self._query.bind(query_endpoint)
            self.query_endpoint = self._query.getsockopt_string(zmq.LAST_ENDPOINT)
        self._links: list[_Link] = []
        self._poller = zmq.Poller()
        self._closing = threading.Event()
        self._failure: Exception | None = None  # the loop died: answers would go stale
        self._thread = threading.Thread(target=self._run, name="kv-directory", daemon=True)

    # --- API ----------------------------------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_publisher(self, endpoint: str, replay_endpoint: str | None = None) -> None:
        self._pending.put((endpoint, replay_endpoint))
        self._wake()

    def longest_prefix(self, keys: Sequence[BlockKey]) -> list[PrefixMatch]:
        """Per worker (and the shared "redis" pseudo-worker), the leading keys it holds."""
        if self._failure is not None:
            raise DirectoryError(f"the cache directory stopped following its workers: "
                                 f"{type(self._failure).__name__}: {self._failure}")
        self.expire()
        return self.index.longest_prefix(list(keys))

    def expire(self) -> list[str]:
        return self.index.expire(time.monotonic())

    def workers(self) -> list[str]:
        return self.index.workers()

    def close(self) -> None:
        if self._thread.is_alive():
            self._closing.set()
            self._wake()
            self._thread.join(10.0)
        else:
            self._close_owned()
        with self._wake_lock:
            self._wake_tx.close()
        self._ctx.term()

    def _wake(self) -> None:
        with self._wake_lock:
            if not self._wake_tx.closed:
                with contextlib.suppress(zmq.Again):  # wake-ups are pending already
                    self._wake_tx.send(b"", zmq.NOBLOCK)

    # --- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        self._poller.register(self._wake_rx, zmq.POLLIN)
        if self._query is not None:
            self._poller.register(self._query, zmq.POLLIN)
        try:
            while not self._closing.is_set():
                self._connect_pending()
                ready = dict(self._poller.poll(int(self.tick_s * 1000)))
                if self._wake_rx in ready:
                    _drain_wakes(self._wake_rx)
                for link in self._links:
                    if link.sub in ready:
                        self._read_live(link)
                    if link.replay is not None and link.replay in ready:
                        self._read_replay(link)
                    if link.replay is not None and time.monotonic() > link.replay_deadline:
                        self._end_replay(link, ok=False)
                if self._query is not None and self._query in ready:
                    self._serve_queries(self._query)
                self.expire()
        except Exception as exc:
            logger.exception("the cache directory loop failed")
            self._failure = exc
            raise
        finally:
            self._close_owned()

    def _close_owned(self) -> None:
        for link in self._links:
            link.sub.close(linger=0)
            if link.replay is not None:
                link.replay.close(linger=0)
        self._wake_rx.close(linger=0)
        if self._query is not None:
            self._query.close(linger=0)

    def _connect_pending(self) -> None:
        while True:
            try:
                endpoint, replay_endpoint = self._pending.get_nowait()
            except queue.Empty:
                return
            sub = self._ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
            sub.setsockopt(zmq.SUBSCRIBE, self.topic)
            sub.connect(endpoint)
            link = _Link(endpoint, replay_endpoint, sub)
            self._links.append(link)
            self._poller.register(sub, zmq.POLLIN)
            if replay_endpoint is not None:
                self._start_replay(link)  # a late subscriber catches up on what it missed

    def _read_live(self, link: _Link, limit: int = 1000) -> None:
        for _ in range(limit):  # then let the other sockets have a turn
            try:
                frames = link.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            message = _decode_message(frames, link.endpoint)
            if message is not None:
                self._on_live(link, *message)

    def _on_live(self, link: _Link, seq: int, batch: AnnouncedBatch) -> None:
        if not self._accept(link, batch):
            return
        assert link.worker_id is not None
        self.index.renew(link.worker_id, time.monotonic())
        if seq <= link.last_seq:
            return  # a heartbeat, or a batch a replay already brought
        if batch.events and seq == link.last_seq + 1:
            self._apply(link, seq, batch)
        elif link.replay is not None:
            return  # the replay in flight brings it, or the next heartbeat shows the gap again
        elif link.replay_endpoint is not None:
            self._start_replay(link)
        else:
            self._lost_history(link, seq - 1 if batch.events else seq)
            if batch.events:
                self._apply(link, seq, batch)

    def _accept(self, link: _Link, batch: AnnouncedBatch) -> bool:
        """Register the worker on first contact, after a restart or after its lease lapsed."""
        ann = batch.worker
        if ann is None:
            logger.warning("ignoring an unannounced KV event batch from %s", link.endpoint)
            return False
        if ann.epoch == link.epoch:
            if link.refused is not None:
                return False
            if self.index.has_worker(link.worker_id):
                return True
        if link.worker_id is not None and ann.epoch != link.epoch:
            self.index.drop(link.worker_id)  # a restarted worker holds nothing it did not tell
        link.worker_id, link.epoch, link.last_seq, link.refused = (
            batch.worker_id, ann.epoch, -1, None)
        try:
            self.index.register(batch.worker_id, ann.scheme, ann.lease_s, time.monotonic())
        except (KeySchemeMismatchError, ValueError) as exc:
            link.refused = self.refused[batch.worker_id] = exc
            logger.error("refusing worker %r at %s: %s", batch.worker_id, link.endpoint, exc)
            return False
        self.refused.pop(batch.worker_id, None)
        return True

    def _apply(self, link: _Link, seq: int, batch: AnnouncedBatch) -> None:
        assert link.worker_id is not None
        self.index.apply(link.worker_id, batch.events)
        link.last_seq = seq

    def _lost_history(self, link: _Link, seq: int) -> None:
        assert link.worker_id is not None
        logger.warning("KV events %d..%d of worker %r are lost; forgetting its blocks",
                       link.last_seq + 1, seq, link.worker_id)
        self.index.forget_blocks(link.worker_id)
        link.last_seq = seq

    # --- replay -------------------------------------------------------------------------------

    def _start_replay(self, link: _Link) -> None:
        assert link.replay_endpoint is not None
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(link.replay_endpoint)
        sock.send_multipart([b"", encode_seq(link.last_seq + 1)])
        link.replay, link.replay_deadline = sock, time.monotonic() + self.replay_timeout_s
        self._poller.register(sock, zmq.POLLIN)
        self.replays += 1

    def _read_replay(self, link: _Link) -> None:
        while link.replay is not None:
            try:
                frames = link.replay.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 3 and frames[1] == END_SEQ:
                end = _decode_message(frames[1:], link.replay_endpoint or "") if frames[2] else None
                if end is not None:  # our publishers end with a heartbeat: it registers them
                    self._accept(link, end[1])
                self._end_replay(link, ok=True)
                return
            message = _decode_message(frames[1:], link.replay_endpoint or "")
            if message is None:
                continue
            seq, batch = message
            if not self._accept(link, batch):
                self._end_replay(link, ok=False)
                return
            if seq <= link.last_seq or not batch.events:
                continue
            if seq > link.last_seq + 1:  # the ring no longer holds what we asked for
                self._lost_history(link, seq - 1)
            self._apply(link, seq, batch)

    def _end_replay(self, link: _Link, ok: bool) -> None:
        assert link.replay is not None
        self._poller.unregister(link.replay)
        link.replay.close(linger=0)
        link.replay = None
        if ok and link.worker_id is not None:
            self.index.renew(link.worker_id, time.monotonic())  # it answered: it is alive
        elif not ok and link.worker_id is not None:
            logger.warning("replay from %s did not finish within %.1fs",
                           link.replay_endpoint, self.replay_timeout_s)

    # --- queries ------------------------------------------------------------------------------

    def _serve_queries(self, sock: zmq.Socket[Any]) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            envelope, payload = frames[:-1], frames[-1]
            try:
                query = _query_decoder.decode(payload)
                reply = PrefixReply(query.nonce, self.longest_prefix(
                    [BlockKey(k) for k in query.keys]))
            except msgspec.DecodeError as exc:
                reply = PrefixReply(0, [], f"malformed query: {exc}")
            sock.send_multipart([*envelope, _encoder.encode(reply)])


def _decode_message(frames: list[bytes], source: str) -> tuple[int, AnnouncedBatch] | None:
    """[topic, seq, payload] (live) or [seq, payload] (replay) → (seq, batch)."""
    if len(frames) not in (2, 3) or len(frames[-2]) != 8:
        logger.warning("ignoring a malformed KV event message from %s", source)
        return None
    try:
        return decode_seq(frames[-2]), batch_decoder.decode(frames[-1])
    except msgspec.DecodeError as exc:
        logger.warning("ignoring an undecodable KV event batch from %s: %s", source, exc)
        return None


def _drain_wakes(sock: zmq.Socket[Any]) -> None:
    while True:
        try:
            sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
