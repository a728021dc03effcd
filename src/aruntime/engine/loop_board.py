"""A real-time loop's board: what a loop beside the engine publishes of its slack each period,
in a small shared file (mmap), so that the engine — another process — can yield between steps
when the loop runs short (engine/step_gate.py). One writer, the loop; any readers; no lock:
each entry carries its own sequence number, written after the entry, so a reader skips an entry
the writer is overwriting. A file that is not a board (wrong size or magic) reads as no loop,
never as an error that stops the engine.

Layout, little-endian: magic, period_ns, floor_ns (the loop's declared least slack), epoch_ns
(when this loop started: a restarted loop is a new one), seq (entries written), then SLOTS
entries of (seq, ended_ns, slack_ns) — the k-th at slot k % SLOTS."""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"ARTLOOP1"
HEADER = struct.Struct("<8sqqqq")
ENTRY = struct.Struct("<qqq")
SLOTS = 256
SIZE = HEADER.size + SLOTS * ENTRY.size
SEQ_AT = HEADER.size - 8


def _slot(k: int) -> int:
    """Where entry k lies."""
    return HEADER.size + (k % SLOTS) * ENTRY.size


def _open(path: Path, create: bool) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    try:
        if create:
            os.ftruncate(fd, SIZE)
        elif os.fstat(fd).st_size != SIZE:
            raise ValueError(f"{path} is not a loop board")
        return mmap.mmap(fd, SIZE)
    finally:
        os.close(fd)


class LoopBoard:
    """The loop's side: the file made (or taken over) at start, one entry published a period."""

    def __init__(self, path: str | Path, period_ns: int, floor_ns: int, epoch_ns: int) -> None:
        if not 0 <= floor_ns <= period_ns:
            raise ValueError("a loop's slack floor lies between 0 and its period")
        self.path = Path(path)
        self._map = _open(self.path, create=True)
        self._seq = 0
        HEADER.pack_into(self._map, 0, MAGIC, period_ns, floor_ns, epoch_ns, 0)

    def publish(self, ended_ns: int, slack_ns: int) -> None:
        """A step ended at `ended_ns` with `slack_ns` left before its deadline (negative: over)."""
        self._seq += 1
        ENTRY.pack_into(self._map, _slot(self._seq), self._seq, ended_ns, slack_ns)
        struct.pack_into("<q", self._map, SEQ_AT, self._seq)

    def close(self) -> None:
        self._map.close()


@dataclass(frozen=True, slots=True)
class Reading:
    """What the loop published since the reader last looked."""

    period_ns: int
    floor_ns: int
    entries: int  # new since the last reading (at most SLOTS are looked at)
    least_slack_ns: int | None  # the least slack among them; None: none new
    last_ended_ns: int  # when the loop's latest step ended (0: it has published none)

    @property
    def short(self) -> bool:
        return self.least_slack_ns is not None and self.least_slack_ns < self.floor_ns


class BoardReader:
    """The engine's side: the board opened once it exists, and read without blocking."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._map: mmap.mmap | None = None
        self._epoch = 0
        self._seen = 0

    def read(self) -> Reading | None:
        """None when there is no board at the path (yet), or the file is not one."""
        if self._map is None:
            try:
                self._map = _open(self.path, create=False)
            except (OSError, ValueError):
                return None
        magic, period, floor, epoch, seq = HEADER.unpack_from(self._map, 0)
        if magic != MAGIC:
            return None
        if epoch != self._epoch or seq < self._seen:  # another loop: its entries are all new
            self._epoch, self._seen = epoch, 0
        least, last, new = None, 0, 0
        for k in range(max(self._seen + 1, seq - SLOTS + 1), seq + 1):
            at, ended, slack = ENTRY.unpack_from(self._map, _slot(k))
            if at != k:  # being overwritten, or never written
                continue
            new += 1
            least = slack if least is None else min(least, slack)
            last = max(last, ended)
        self._seen = seq
        if not new and seq:
            _, last, _ = ENTRY.unpack_from(self._map, _slot(seq))
        return Reading(period, floor, new, least, last)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
