"""What a checkpoint costs, from its config alone: KV bytes, model FLOPs, a workload's KV budget.
No torch here: the benchmarks size their engines and count their FLOPs before loading anything."""

from __future__ import annotations

import json
import math
from pathlib import Path

from aruntime.engine.config import ModelConfig


def load_model_config(model_dir: Path) -> ModelConfig:
    """A directory's config.json, or a GGUF file's metadata (a CheckpointError, a ValueError,
    when it cannot be served)."""
    if model_dir.is_file():
        from aruntime.engine.gguf_checkpoint import gguf_config, open_reader

        return gguf_config(open_reader(model_dir))
    return ModelConfig.from_hf(json.loads((model_dir / "config.json").read_text()))


def block_bytes(model_dir: Path, block_size: int) -> int:
    """fp32 KV bytes of one block of this checkpoint."""
    return load_model_config(model_dir).kv_bytes_per_token() * block_size


def projection_params(m: ModelConfig) -> int:
    """Weights of the matmuls between embedding and LM head (norms are not matmuls)."""
    q = m.num_attention_heads * m.head_dim
    kv = m.num_key_value_heads * m.head_dim
    attn = m.hidden_size * (q + 2 * kv) + q * m.hidden_size + (q + 2 * kv) * m.attention_bias
    return m.num_hidden_layers * (attn + 3 * m.hidden_size * m.intermediate_size)


def request_flops(m: ModelConfig, prompt: int, output: int, cached: int = 0) -> float:
    """Model FLOPs of one request: 2 x projection weights per position fed through the model,
    attention 4 x layers x ctx x width per position, and the LM head once per generated token.
    Positions `cached` .. prompt+output-2 are computed (the last token is never fed back)."""
    first, last = cached + 1, prompt + output - 1  # context lengths seen by those positions
    positions = last - first + 1
    ctx_sum = (first + last) * positions / 2
    width = m.num_attention_heads * m.head_dim
    return (2 * projection_params(m) * positions
            + 4 * m.num_hidden_layers * width * ctx_sum
            + 2 * m.vocab_size * m.hidden_size * output)


def kv_budget(m: ModelConfig, lengths: list[int], block_size: int = 16) -> int:
    """KV bytes for every sequence at full length at once, and a block more each: the throughput
    run should measure batching, not preemption; a bigger pool would only add to the RSS."""
    blocks = sum(math.ceil(n / block_size) + 1 for n in lengths)
    return blocks * block_size * m.kv_bytes_per_token()
