"""How deeply a JSON text nests and how many arrays and objects it holds, read from its bytes as
they stream in, before any parser sees them: Python's `json` recurses once per level (a body
nested 50,000 deep is a RecursionError) and holds the GIL while it builds every container (16 MiB
of `[],` is several seconds, mostly the garbage collector's).

The scan is exact for valid JSON: brackets inside strings are skipped, and a backslash escapes
the character after it (outside strings a backslash is invalid JSON, which the parser refuses
at that point, before any nesting after it). Each chunk is one pass of numpy array operations,
not a Python loop over its bytes.
"""

from __future__ import annotations

import numpy as np

_BACKSLASH, _QUOTE = ord("\\"), ord('"')
_OPEN = np.zeros(256, dtype=bool)
_OPEN[[ord("["), ord("{")]] = True
_CLOSE = np.zeros(256, dtype=bool)
_CLOSE[[ord("]"), ord("}")]] = True


class JsonShapeError(ValueError):
    """The text nests deeper, or holds more containers, than allowed."""


class JsonShape:
    """Fed a JSON text chunk by chunk; `feed` raises `JsonShapeError` at the first chunk that
    takes it past `max_depth` levels or `max_containers` arrays and objects."""

    def __init__(self, max_depth: int, max_containers: int) -> None:
        self.max_depth = max_depth
        self.max_containers = max_containers
        self.depth = 0
        self.containers = 0
        self._in_string = False
        self._backslashes = 0  # the run of backslashes the last chunk ended with

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        a = np.frombuffer(chunk, dtype=np.uint8)
        quotes = a == _QUOTE
        if self._backslashes or b"\\" in chunk:  # else nothing is escaped
            quotes &= ~self._escaped(a)
        # a bracket is structural when an even number of real quotes precede it (with the carry)
        outside = (np.cumsum(quotes, dtype=np.int32) & 1) == int(self._in_string)
        opens = _OPEN[a] & outside
        step = opens.view(np.int8) - (_CLOSE[a] & outside).view(np.int8)
        levels = self.depth + np.cumsum(step, dtype=np.int64)
        self.containers += int(opens.sum())
        self.depth = int(levels[-1])
        self._in_string ^= bool(quotes.sum() & 1)
        if int(levels.max()) > self.max_depth:
            raise JsonShapeError(f"nests deeper than {self.max_depth} levels")
        if self.containers > self.max_containers:
            raise JsonShapeError(f"holds more than {self.max_containers} arrays and objects")

    def _escaped(self, a: np.ndarray) -> np.ndarray:
        """Which bytes follow an odd run of backslashes (the run may have begun in the last
        chunk); keeps the run this chunk ends with for the next."""
        idx = np.arange(a.size, dtype=np.int64)
        last_plain = np.maximum.accumulate(np.where(a == _BACKSLASH, -1, idx))
        # the run of backslashes ending at each byte (0 at any other byte)
        run = idx - last_plain + np.where(last_plain < 0, self._backslashes, 0)
        before = np.empty_like(run)
        before[0], before[1:] = self._backslashes, run[:-1]
        self._backslashes = int(run[-1])
        return (before & 1).astype(bool)
