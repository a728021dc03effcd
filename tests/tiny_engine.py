"""What the multi-process tests share about the tiny checkpoint: a block size, its KV bytes,
seeded prompts and a small engine config."""

from __future__ import annotations

import random
from pathlib import Path

from aruntime.engine.config import EngineConfig

BLOCK = 4
BLOCK_BYTES = 2 * 2 * 2 * BLOCK * 16 * 4  # tiny: layers * (k, v) * kv_heads * block * dim * fp32


def prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 1500) for _ in range(n)]


def config(model: Path) -> EngineConfig:
    return EngineConfig(model=str(model), device="cpu", block_size=BLOCK,
                        kv_cache_bytes=128 * BLOCK_BYTES, max_num_seqs=8)
