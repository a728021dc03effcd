"""The one path every benchmark ends on: its figures become a report (lines and facts, the ratio
line last), a raw log (the rows and readings behind the figures, and the report), and a claim
record whose `raw_log_sha256` is that log's, written beside it when asked.

Two layouts, each as its benchmarks printed and logged before the path was shared:

- a summary report (`bench engine`, `bench durable`) is printed once, at the end, on `out`; it
  names the record file before its ratio line; its raw log is the rows and readings, a blank
  line, then the report. Progress notes go to stderr meanwhile (`progress_notes`).
- a live report (the trace benchmarks, `bench cache` and `bench route`) prints each line as it
  comes, since minutes can pass between them; its raw log is those lines and the rows, in the
  order they came.

A smoke run (the trace benchmarks' `--quick`) says so just before the ratio and writes no claim.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aruntime.bench.claim import ClaimSpec, write_claim


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """Every benchmark's `--json FILE`: where its claim record (and FILE.log) goes."""
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="write the claim record here (and the raw log to FILE.log)")


def json_path(args: argparse.Namespace) -> Path | None:
    """`--json`, checked before anything is measured: a directory is a usage error."""
    from aruntime.errors import UsageError

    path: Path | None = args.json
    if path is not None and path.is_dir():
        raise UsageError(f"--json {path} is a directory; give a file name")
    return path


SMOKE_NOTE = ("smoke run (--quick): a smaller slice than the full run's, so its figures may "
              "tell another story than the claim's; no claim is written")


@dataclass(slots=True)
class Outcome:
    record: dict[str, Any]  # the claim record
    report: str  # what was printed on stdout, ratio last
    raw_log: str  # rows and readings, and the report; its sha256 is in the record


def progress_notes(stream: TextIO | None = None) -> Callable[[str], None]:
    """Progress notes of a summary report's benchmark: `[bench] ...` on stderr (or `stream`),
    neither in the report nor in the raw log."""

    def note(msg: str) -> None:
        print(f"[bench] {msg}", file=stream or sys.stderr, flush=True)

    return note


class Report:
    """A benchmark's report and raw log as it builds them; `finish` ends both and the claim."""

    def __init__(self, out: TextIO | None = None, *, live: bool = False) -> None:
        self.live = live
        self._out = out  # None: stdout as it is when printed (tests redirect it)
        self._lines: list[str] = []  # the report
        self._log: list[str] = []  # live: the report's lines and the rows; else the rows

    def line(self, text: str = "") -> None:
        """A line of the report (printed now if live)."""
        self._lines.append(text)
        if self.live:
            self._log.append(text)
            print(text, file=self._out or sys.stdout, flush=True)

    def lines(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.line(text)

    def facts(self, facts: Iterable[tuple[str, str]], width: int) -> None:
        """A blank line, then one `label: text` line per fact, the texts aligned at `width`."""
        self.line()
        self.lines(f"{label + ':':<{width}}{text}" for label, text in facts)

    def row(self, text: str) -> None:
        """A line of the raw log only: a request's or an invocation's measurement."""
        self._log.append(text)

    def rows(self, texts: Iterable[str]) -> None:
        self._log.extend(texts)

    def reading(self, name: str, value: Any) -> None:
        """A named reading of the run, as JSON, in the raw log: `# name {...}`."""
        self.row(f"# {name} {json.dumps(value)}")

    def finish(self, ratio_line: str, claim: ClaimSpec, json_path: Path | None = None, *,
               smoke: bool = False) -> Outcome:
        """The ratio line last (a smoke run's note, or a summary report's record file, just
        before it); the raw log; the claim record, written with the log at `json_path` unless
        this is a smoke run; a summary report printed."""
        if smoke:
            self.line(SMOKE_NOTE)
        elif json_path is not None and not self.live:
            self.line(f"claim record: {json_path} (raw log: {json_path}.log)")
        self.line(ratio_line)
        report = "".join(f"{text}\n" for text in self._lines)
        raw_log = "\n".join(self._log if self.live else [*self._log, "", report])
        record = claim.record(raw_log)
        if json_path is not None and not smoke:
            write_claim(json_path, record, raw_log)
        if not self.live:
            out = self._out or sys.stdout
            out.write(report)
            out.flush()
        return Outcome(record, report, raw_log)
