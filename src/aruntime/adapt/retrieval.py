"""Retrieval releases: a retrieval config — its documents and how they are searched — that a
request names by `aruntime.retrieval` (`NAME` or `NAME@ALIAS`). The passages it finds for the
request's last user message are set before the messages, as a system message, and the evidence
names their ids. The documents live inside the release, so a changed corpus is a new version
that must roll out like any other.

The file is JSON: `documents` (`[{"id", "text"}]`), `top_k` (1-20, default 3), `min_score` (a
BM25 score a passage must pass, default 0: any shared term), `max_chars` (the passages' total
at most, default 4000) and `instruction` (the line before them). Search is Okapi BM25 (k1 1.2,
b 0.75) over lowercase word tokens, built once per version when it is first served.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

K1, B = 1.2, 0.75
MAX_TOP_K = 20
INSTRUCTION = "Answer using these passages where they help; each starts with its [id]."
_WORD = re.compile(r"\w+")


def terms(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    score: float


@dataclass(frozen=True)
class Retriever:
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    counts: tuple[Counter[str], ...]
    idf: Mapping[str, float]
    avg_len: float
    top_k: int = 3
    min_score: float = 0.0
    max_chars: int = 4000
    instruction: str = INSTRUCTION

    @classmethod
    def from_json(cls, data: Any) -> Retriever:
        """ValueError, naming what is wrong, for anything but a retrieval config."""
        if not isinstance(data, dict):
            raise ValueError("a retrieval config is a JSON object")
        unknown = set(data) - {"documents", "top_k", "min_score", "max_chars", "instruction"}
        if unknown:
            raise ValueError(f"unknown retrieval settings: {', '.join(sorted(unknown))}")
        docs = data.get("documents")
        if not isinstance(docs, list) or not docs or not all(
                isinstance(d, dict) and isinstance(d.get("id"), str) and d["id"]
                and isinstance(d.get("text"), str) for d in docs):
            raise ValueError("documents is a non-empty list of {\"id\": str, \"text\": str}")
        ids = tuple(d["id"] for d in docs)
        if len(set(ids)) != len(ids):
            raise ValueError("document ids must be unique")
        top_k, min_score = data.get("top_k", 3), data.get("min_score", 0.0)
        max_chars, instruction = data.get("max_chars", 4000), data.get("instruction", INSTRUCTION)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k is an integer in 1-{MAX_TOP_K}")
        if not isinstance(min_score, int | float) or isinstance(min_score, bool):
            raise ValueError("min_score is a number")
        if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1:
            raise ValueError("max_chars is an integer >= 1")
        if not isinstance(instruction, str):
            raise ValueError("instruction is a string")
        return cls.index([(d["id"], d["text"]) for d in docs], top_k=top_k,
                         min_score=float(min_score), max_chars=max_chars,
                         instruction=instruction)

    @classmethod
    def index(cls, docs: list[tuple[str, str]], **settings: Any) -> Retriever:
        counts = tuple(Counter(terms(text)) for _, text in docs)
        df: Counter[str] = Counter(t for c in counts for t in c)
        n = len(docs)
        idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        avg = sum(sum(c.values()) for c in counts) / n or 1.0
        return cls(tuple(i for i, _ in docs), tuple(t for _, t in docs), counts, idf, avg,
                   **settings)

    def score(self, query: list[str], i: int) -> float:
        counts = self.counts[i]
        length = sum(counts.values())
        total = 0.0
        for t in set(query):
            f = counts.get(t, 0)
            if f:
                total += self.idf[t] * f * (K1 + 1) / (f + K1 * (1 - B + B * length / self.avg_len))
        return total

    def search(self, query: str) -> list[Passage]:
        """The best `top_k` passages above `min_score`, best first (ties by id), within
        `max_chars` in all."""
        q = terms(query)
        scored = sorted(((self.score(q, i), self.ids[i]) for i in range(len(self.ids))),
                        key=lambda s: (-s[0], s[1]))
        out: list[Passage] = []
        used = 0
        by_id = dict(zip(self.ids, self.texts, strict=True))
        for score, doc_id in scored[:self.top_k]:
            text = by_id[doc_id]
            if score <= self.min_score or used + len(text) > self.max_chars:
                break
            out.append(Passage(doc_id, text, score))
            used += len(text)
        return out

    def context(self, passages: list[Passage]) -> str:
        """The system message the passages are set in."""
        return "\n\n".join([self.instruction, *(f"[{p.id}] {p.text}" for p in passages)])
