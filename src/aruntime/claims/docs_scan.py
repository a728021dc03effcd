"""Figures and placeholders in the README and `docs/`.

A figure is a number with a unit, a ratio sign or a percent next to it (`3.58×`, `10.9x`,
`460 tok/s`, `37%`, `12 ms`, `310 MB`). Plain numbers are not figures: versions, dates, ports,
sizes in prose ("hidden 512"). Code (fenced blocks, inline code), HTML comments, link targets
and struck-through text (`~~…~~`, a withdrawn figure) are not scanned for figures.

A figure is sourced when its line (a table row is a line) names a registered claim id, e.g.
`[output-throughput-2026-11-27]` or `(claim: output-throughput-2026-11-27)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from aruntime.claims.rules import Violation
from aruntime.contracts import ClaimRecord, ClaimStatus

# Not inside a word or a version ("v1.2x", "GPT-4x"), but a leading sign or "~" is fine.
_NUMBER = r"(?<![\w.])(?<!\w-)\d+(?:,\d{3})*(?:\.\d+)?"
_UNITS = (r"(?:[kMGT]?tok(?:en)?s?/s|req(?:uest)?s?/s|it/s|[kMGTP]?FLOP/s|[kMGT]i?B/s|"
          r"ms|µs|us|ns|s|sec|seconds?|min|minutes?|[kKMGT]i?B)")
FIGURE = re.compile(_NUMBER + rf"(?:x(?!\w)|\s?×|\s?%|\s{_UNITS}(?![\w/])|{_UNITS}(?![\w/]))")
PLACEHOLDER = re.compile(r"\b(?:TBD|TODO|FIXME)\b|\?{3,}|\bX{2,}\b")
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+).+?\1")
_STRUCK = re.compile(r"~~.+?~~")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+[\"'(][^)]*)?\s*\)")
_IMG_TAG = re.compile(r"<img\b[^>]*>", re.I)
_IMG_SRC = re.compile(r"\bsrc\s*=\s*([\"'])(.*?)\1", re.I)
_LINK_TARGET = re.compile(r"\]\([^)]*\)|<https?://[^>]*>|https?://\S+")
_CITATION = re.compile(r"\bclaim:\s*([a-z0-9][a-z0-9-]*)|\bclaims/([a-z0-9][a-z0-9-]*)\.json")
_ID_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def doc_files(root: Path) -> list[Path]:
    """The README and every Markdown page under `docs/`."""
    docs = root / "docs"
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    return found + (sorted(docs.rglob("*.md")) if docs.is_dir() else [])


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line outside fenced code and HTML comments, inline code
    blanked out."""
    fence: str | None = None
    in_comment = False
    for number, line in enumerate(text.splitlines(), 1):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        kept, rest = [], line
        while rest:
            if in_comment:
                end = rest.find("-->")
                in_comment, rest = (True, "") if end < 0 else (False, rest[end + 3:])
            else:
                start = rest.find("<!--")
                kept.append(rest if start < 0 else rest[:start])
                in_comment, rest = (False, "") if start < 0 else (True, rest[start + 4:])
        yield number, _INLINE_CODE.sub(" ", "".join(kept))


def _image_targets(line: str) -> Iterator[tuple[str, str]]:
    """(what the image looks like in the text, its target) for Markdown and <img> images."""
    for match in _IMAGE.finditer(line):
        yield match.group(0), match.group(2).strip("<>")
    for tag in _IMG_TAG.finditer(line):
        src = _IMG_SRC.search(tag.group(0))
        yield tag.group(0), src.group(2).strip() if src else ""


def image_problem(target: str, base_dir: Path) -> str | None:
    if not target.strip():
        return "has no target"
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # a URL or data: URI; not fetched
        return None
    local = target.split("#", 1)[0].split("?", 1)[0]
    if not (base_dir / local).is_file():
        return f"points at {local}, which does not exist"
    return None


def scan_markdown(text: str, *, file: str, base_dir: Path,
                  claims: Mapping[str, ClaimRecord]) -> list[Violation]:
    """Placeholders, broken images and figures that name no current claim, line by line."""
    found = []
    for number, line in prose_lines(text):
        where = f"line {number}"
        for shown, target in _image_targets(line):
            problem = image_problem(target, base_dir)
            if problem:
                found.append(Violation(file, where, f"image placeholder: {shown} {problem}"))
        for match in PLACEHOLDER.finditer(_LINK_TARGET.sub("]", line)):
            found.append(Violation(file, where, f"placeholder {match.group(0)!r}: publish the "
                                   "figure with its claim, or leave it out"))
        cited = {w for w in _ID_WORD.findall(line) if w in claims}
        for match in _CITATION.finditer(line):
            name = match.group(1) or match.group(2)
            if name not in claims:
                found.append(Violation(file, where, f"cites {name!r}, which is not a "
                                       "registered claim"))
        figures = FIGURE.findall(_STRUCK.sub(" ", _LINK_TARGET.sub("]", line)))
        if not figures:
            continue
        shown = ", ".join(repr(f.strip()) for f in figures)
        if not cited:
            found.append(Violation(file, where, f"unsourced figure {shown}: name its claim id "
                                   "on the same line, e.g. [<claim-id>]"))
        elif all(claims[c].status is ClaimStatus.YANKED for c in cited):
            found.append(Violation(file, where, f"figure {shown} cites only yanked claims "
                                   f"({', '.join(sorted(cited))}): strike it through "
                                   "(~~…~~) or cite a current claim"))
    return found
