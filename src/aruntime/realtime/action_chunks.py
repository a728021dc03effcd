"""LeRobot's asynchronous inference: a planner at a lower rate (the LLM engine, say) produces
chunks of actions; the loop consumes one action a period and, when the queue falls under a
threshold, asks for the next chunk — on the planner's own thread, so the loop never waits for
it. A period with an empty queue gets no action, and the loop's declared behaviour applies."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")


class ActionChunks(Generic[A]):
    def __init__(self, plan: Callable[[], Sequence[A]], threshold: int) -> None:
        self._plan = plan  # one chunk of actions (blocking: it runs on the planner's thread)
        self.threshold = threshold
        self._queue: deque[A] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self.chunks = 0  # chunks received
        self.empty = 0  # periods that found no action
        self._thread = threading.Thread(target=self._run, name="aruntime-planner", daemon=True)

    def start(self) -> ActionChunks[A]:
        self._wanted.set()  # the first chunk, before the first period
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wanted.wait()
            if self._stop.is_set():
                return
            self._wanted.clear()
            chunk = list(self._plan())
            with self._arrived:
                self._queue.extend(chunk)
                self.chunks += 1
                self._arrived.notify_all()

    def pop(self) -> A | None:
        """The next action (None when the queue is empty); asks for a chunk under threshold."""
        with self._lock:
            action = self._queue.popleft() if self._queue else None
            low = len(self._queue) < self.threshold
        if action is None:
            self.empty += 1
        if low:
            self._wanted.set()
        return action

    def wait_chunks(self, n: int, timeout: float) -> bool:
        """Whether `n` chunks have arrived within `timeout` (a monitor's, a test's)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.chunks >= n, timeout)

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        self._thread.join(timeout=10)
