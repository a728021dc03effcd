"""Where a worker's KV events go: the publisher seam, and its ZeroMQ form in vLLM's wire shape.

A PUB socket sends multipart [topic, seq (8-byte big-endian, signed), msgpack(batch)]. A ring of
recent batches answers a late or lossy subscriber on a ROUTER replay socket: it sends a start seq
and gets every buffered batch from it, then END_SEQ (whose payload, empty in vLLM, is a heartbeat
here, so even a worker with nothing buffered registers at once). When the worker has
been quiet for a third of its lease, a heartbeat goes out: a batch with no events carrying the
seq of the last real batch, so an idle worker stays registered and a missed batch shows as a gap.

Every batch (heartbeats included) carries the worker's announcement — key scheme, lease and the
publisher's epoch — so any one batch registers the worker with a directory; a decoder that reads
plain KVEventBatch ignores the extra field. The step loop never touches a socket: it hands work
to a queue; a sender thread owns the PUB socket and a replay thread the ROUTER socket.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from aruntime.kv.events import AllBlocksCleared, KVEventBatch
from aruntime.kv.keys import KeyScheme

logger = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)  # after the last replayed batch, as vLLM ends it


class WorkerAnnounce(msgspec.Struct, frozen=True):
    """Who publishes: the key scheme its keys follow, its lease, and this publisher's epoch."""

    scheme: KeyScheme
    lease_s: float
    epoch: str  # new at every publisher start: a restarted worker counts its seq from 0 again


class AnnouncedBatch(KVEventBatch):
    worker: WorkerAnnounce | None = None


batch_encoder = msgspec.msgpack.Encoder()
batch_decoder = msgspec.msgpack.Decoder(AnnouncedBatch)


def encode_seq(seq: int) -> bytes:
    return seq.to_bytes(8, "big", signed=True)


def decode_seq(frame: bytes) -> int:
    return int.from_bytes(frame, "big", signed=True)


class KVEventPublisher(ABC):
    """Seam: one per engine core, built when the core starts, shut down when it stops."""

    @abstractmethod
    def publish(self, batch: KVEventBatch) -> None:
        """Called with a drained batch, on any thread; returns at once (no socket IO)."""

    def on_step(self) -> None:
        """Called on the step loop after each engine step; a publisher that drains the engine's
        event buffer itself collects the step's events here, off the loop."""

    def shutdown(self) -> None:
        """Called once when the worker stops; the worker's blocks leave with it."""


_POKE = object()  # drain the source now
_STOP = object()


class ZmqPublisher(KVEventPublisher):
    """Binds `endpoint` (and `replay_endpoint`) at construction, so a bad address fails here.

    With `drain`, the sender thread collects events itself — after each `on_step` and before each
    heartbeat, so events a tier writer emits while the engine idles still go out; only that
    thread drains, so batches keep their order.
    """

    def __init__(self, endpoint: str, *, worker_id: str, scheme: KeyScheme, lease_s: float = 10.0,
                 replay_endpoint: str | None = None,
                 drain: Callable[[], KVEventBatch | None] | None = None,
                 buffer_size: int = 10_000, topic: bytes = b"", sndhwm: int = 100_000) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.worker_id = worker_id
        self.announce = WorkerAnnounce(scheme, lease_s, uuid.uuid4().hex)
        self.topic = topic
        self.seq = -1  # the last batch sent; read by tests and heartbeats
        self._drain = drain
        self._queue: queue.Queue[Any] = queue.Queue()
        self._ring: deque[tuple[int, bytes]] = deque(maxlen=buffer_size)
        self._ring_lock = threading.Lock()
        self._stopping = threading.Event()
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, sndhwm)
        self._pub.setsockopt(zmq.LINGER, 1000)  # the farewell batch may still be in flight
        self._replay: zmq.Socket[Any] | None = None
        try:
            self._pub.bind(endpoint)
            if replay_endpoint is not None:
                self._replay = self._ctx.socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.SNDHWM, 0)  # a replay is sent whole, never dropped
                self._replay.setsockopt(zmq.LINGER, 0)
                self._replay.bind(replay_endpoint)
        except zmq.ZMQError:
            self._close_sockets()
            raise
        self.endpoint: str = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.replay_endpoint: str | None = (
            self._replay.getsockopt_string(zmq.LAST_ENDPOINT) if self._replay else None)
        self._threads = [threading.Thread(target=self._send_loop, name="kv-events-pub",
                                          daemon=True)]
        if self._replay is not None:
            self._threads.append(threading.Thread(target=self._replay_loop,
                                                  name="kv-events-replay", daemon=True))
        for thread in self._threads:
            thread.start()

    def publish(self, batch: KVEventBatch) -> None:
        self._queue.put(batch)

    def on_step(self) -> None:
        if self._drain is not None:
            self._queue.put(_POKE)

    def shutdown(self, farewell: bool = True) -> None:
        """Stop the threads; with `farewell`, first tell directories every block of ours is gone
        rather than leave them to wait out the lease."""
        if self._stopping.is_set():
            return
        if farewell:
            self._queue.put(KVEventBatch(time.time(), self.worker_id, [AllBlocksCleared(None)]))
        self._queue.put(_STOP)
        self._threads[0].join(10.0)
        self._stopping.set()
        for thread in self._threads[1:]:
            thread.join(10.0)
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._pub.close()
        if self._replay is not None:
            self._replay.close()
        self._ctx.term()

    def _send_loop(self) -> None:
        interval = self.announce.lease_s / 3
        next_beat = time.monotonic()  # announce at once: directories learn of us on start
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_beat - time.monotonic()))
            except queue.Empty:
                item = None  # time for a heartbeat
            if item is _STOP:
                return
            batch = item if isinstance(item, KVEventBatch) else self._drained()
            if batch is None and item is _POKE:
                continue
            self._send(batch)
            next_beat = time.monotonic() + interval

    def _drained(self) -> KVEventBatch | None:
        if self._drain is None:
            return None
        try:
            return self._drain()
        except Exception:  # a broken source must not silence the heartbeat
            logger.exception("draining KV events failed")
            return None

    def _heartbeat(self) -> bytes:
        return batch_encoder.encode(AnnouncedBatch(time.time(), self.worker_id, [], self.announce))

    def _send(self, batch: KVEventBatch | None) -> None:
        if batch is None or not batch.events:  # a heartbeat names the last seq, takes none
            self._pub.send_multipart([self.topic, encode_seq(self.seq), self._heartbeat()])
            return
        payload = batch_encoder.encode(
            AnnouncedBatch(batch.ts, self.worker_id, batch.events, self.announce))
        with self._ring_lock:
            self.seq += 1
            self._ring.append((self.seq, payload))
        self._pub.send_multipart([self.topic, encode_seq(self.seq), payload])

    def _replay_loop(self) -> None:
        sock = self._replay
        assert sock is not None
        while not self._stopping.is_set():
            if not sock.poll(100, zmq.POLLIN):
                continue
            frames = sock.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                logger.warning("ignoring a malformed replay request (%d frames)", len(frames))
                continue
            client, start = frames[0], decode_seq(frames[2])
            with self._ring_lock:
                items = [(seq, payload) for seq, payload in self._ring if seq >= start]
            for seq, payload in items:
                sock.send_multipart([client, b"", encode_seq(seq), payload])
            sock.send_multipart([client, b"", END_SEQ, self._heartbeat()])
