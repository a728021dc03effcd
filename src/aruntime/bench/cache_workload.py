"""The trace benchmarks' workload: whole conversations of the Mooncake conversation trace, in
arrival order, each 512-token hash id becoming a block of seeded token ids at a scaled length,
so that prompts which shared a hash id share those tokens. `bench cache` replays such a slice;
`bench route` builds its shared-prefix groups from one."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aruntime.kv.keys import KeyScheme, prefix_keys

TRACE = (Path(__file__).resolve().parents[4] / "shared" / "traces"
         / "mooncake_conversation_trace.jsonl")
BLOCK = 32  # tokens per KV block: larger blocks amortise the per-block cost of a restore


@dataclass(frozen=True)
class CacheWorkload:
    conversations: int = 32  # whole conversations of >= min_turns turns, first by arrival
    min_turns: int = 2
    tokens_per_hash: int = 64  # a 512-token hash block becomes this many tokens (1/8 scale)
    max_output: int = 4  # output lengths scaled by the same 1/8, clipped to [1, max_output]
    device_fraction: float = 0.15  # device pool, as a share of the slice's working set
    host_fraction: float = 0.5  # host tier, likewise; the disk tier takes the rest
    seed: int = 0

    def describe(self, requests: int) -> str:
        return (f"Mooncake conversation trace: first {self.conversations} conversations of >= "
                f"{self.min_turns} turns that fit the context, {requests} requests in arrival "
                f"order, one at a time; "
                f"512-token hash blocks scaled to {self.tokens_per_hash} seeded tokens "
                f"(seed {self.seed})")


QUICK = CacheWorkload(conversations=12)


@dataclass
class Request:
    arrival_ms: int
    prompt: list[int]
    output_tokens: int


def conversation_slice(trace: Path, w: CacheWorkload, max_tokens: int) -> list[dict[str, Any]]:
    """Whole conversations (turns share their first non-system hash id), first by arrival,
    among those whose every turn fits `max_tokens` at the workload's scale."""
    rows = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    turns: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        turns[row["hash_ids"][1] if len(row["hash_ids"]) > 1 else -1 - i].append(i)
    scale = 512 // w.tokens_per_hash
    fits = [idx for idx in turns.values() if len(idx) >= w.min_turns and all(
        -(-rows[i]["input_length"] // scale) + w.max_output < max_tokens for i in idx)]
    chosen = fits[:w.conversations]
    return [rows[i] for i in sorted(i for idx in chosen for i in idx)]


def make_requests(rows: list[dict[str, Any]], w: CacheWorkload, vocab: int) -> list[Request]:
    blocks: dict[int, list[int]] = {}

    def block(h: int) -> list[int]:
        if h not in blocks:
            rng = random.Random(f"{w.seed}:{h}")
            blocks[h] = [rng.randrange(100, vocab) for _ in range(w.tokens_per_hash)]
        return blocks[h]

    scale = 512 // w.tokens_per_hash
    out = []
    for row in rows:
        tokens = [t for h in row["hash_ids"] for t in block(h)]
        length = max(1, min(len(tokens), -(-row["input_length"] // scale)))
        outputs = max(1, min(w.max_output, row["output_length"] // scale))
        out.append(Request(row["timestamp"], tokens[:length], outputs))
    return out


def ideal_hit_tokens(requests: list[Request]) -> list[int]:
    """Prefix hits with an infinite cache: full blocks seen before, as the engine counts them
    (at least one prompt token is always computed)."""
    seen: set[bytes] = set()
    scheme = KeyScheme(BLOCK, "ideal")
    hits = []
    for r in requests:
        keys = prefix_keys(scheme.root(), r.prompt, BLOCK)
        usable = (len(r.prompt) - 1) // BLOCK
        n = 0
        while n < usable and keys[n] in seen:
            n += 1
        hits.append(n * BLOCK)
        seen.update(keys)
    return hits


def working_set_blocks(requests: list[Request]) -> int:
    """The distinct KV blocks of the slice's prompts: what an infinite cache would hold."""
    return len({k for r in requests for k in prefix_keys(
        KeyScheme(BLOCK, "ws").root(), r.prompt, BLOCK)})
