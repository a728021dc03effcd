"""The Llama-family decoder (Llama, Mistral, Qwen2): RMSNorm, RoPE, grouped-query attention,
SwiGLU, optional q/k/v bias. One definition; KV lives in the paged cache the runner owns.

Tokens of all scheduled sequences are flattened into one [T, hidden] batch so every projection
is a single large matmul; only attention is split (see `attention.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from aruntime.engine.attention import AttentionBatch, paged_attention
from aruntime.engine.config import ModelConfig
from aruntime.engine.model_parts import parts_of, rms_norm


class Dense(nn.Module):
    """A linear layer whose weight is stored [in, out]: `x @ w` runs up to twice as fast as
    `F.linear` (which reads [out, in]) for the few-token batches of decode and cached prefill
    on CPU, and no slower for large ones."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return x @ self.weight_t
        return torch.addmm(self.bias, x, self.weight_t)

    def load(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """From a Hugging Face [out, in] weight."""
        self.weight_t.copy_(weight.t())
        if bias is not None:
            assert self.bias is not None
            self.bias.copy_(bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":  # the frequency-dependent scaling Llama 3.1 checkpoints ship with
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        inv_freq = torch.where(mid, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv_freq.float()


class Rotary(nn.Module):
    """cos/sin tables for every position, indexed per token (positions differ per sequence)."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), rope_inv_freq(cfg))
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def tables(self, positions: torch.Tensor,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, head_dim] for this step, looked up once and shared by every layer."""
        return (self.cos[positions].unsqueeze(1).to(dtype),
                self.sin[positions].unsqueeze(1).to(dtype))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.split = (q_size, kv_size, kv_size)
        # q/k/v and gate/up are fused so each is one matmul; `load_weights` concatenates them.
        self.qkv_proj = Dense(cfg.hidden_size, sum(self.split), bias=cfg.attention_bias)
        self.o_proj = Dense(q_size, cfg.hidden_size)
        self.gate_up_proj = Dense(cfg.hidden_size, 2 * cfg.intermediate_size)
        self.down_proj = Dense(cfg.intermediate_size, cfg.hidden_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def before_weights(self) -> tuple[torch.Tensor, ...]:
        """The weights `BeforeAttention` takes after x, cos and sin (and the bias, if any)."""
        qkv = self.qkv_proj
        head = (self.input_layernorm.weight, qkv.weight_t)
        return head if qkv.bias is None else (*head, qkv.bias)

    def after_weights(self) -> tuple[torch.Tensor, ...]:
        return (self.o_proj.weight_t, self.post_attention_layernorm.weight,
                self.gate_up_proj.weight_t, self.down_proj.weight_t)


HEAD = -1  # the layer index the head is dispatched with
Dispatch = Callable[..., Any]  # (part name, layer index or -1, *inputs) -> the part's outputs


class LlamaForCausalLM(nn.Module):
    """Serves LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM checkpoints."""

    def __init__(self, cfg: ModelConfig, max_positions: int, *, head_rows: int | None = None,
                 parts: dict[str, nn.Module] | None = None) -> None:
        """`head_rows` and `parts`: a tensor-parallel rank's slice of the vocabulary and its
        parts with their collectives (engine/parallel/); by default, the whole model's."""
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Dense(cfg.hidden_size, head_rows or cfg.vocab_size)
        self.rotary = Rotary(cfg, max_positions)
        self.parts = parts or parts_of(cfg)  # not submodules: they hold no weights

    def forward(self, token_ids: torch.Tensor, batch: AttentionBatch,
                logits_rows: torch.Tensor, dispatch: Dispatch | None = None) -> torch.Tensor:
        """Logits for the rows in `logits_rows` only: the LM head is the largest matmul, and only
        each sampling sequence's last token needs it. `dispatch` runs each dense part (a
        compiled backend's, engine/backends/); by default, eagerly."""
        x = self.run_layers(self.embed_tokens(token_ids), batch, dispatch)
        return self.logits(x, logits_rows, dispatch)

    def run_layers(self, x: torch.Tensor, batch: AttentionBatch,
                   dispatch: Dispatch | None = None) -> torch.Tensor:
        """The decoder layers over hidden states x [T, hidden] (a pipeline stage's alone)."""
        run = dispatch or self.run_part
        cos, sin = self.rotary.tables(batch.positions, x.dtype)
        t = x.shape[0]
        for layer in self.decoder_layers():
            i = layer.layer_idx
            q, k, v = run("before", i, x, cos, sin, *layer.before_weights())
            attn = paged_attention(q, k, v, batch, i)
            x = run("after", i, x, attn.reshape(t, -1), *layer.after_weights())
        return x

    def logits(self, x: torch.Tensor, rows: torch.Tensor,
               dispatch: Dispatch | None = None) -> torch.Tensor:
        out: torch.Tensor = (dispatch or self.run_part)("head", HEAD, x[rows], self.norm.weight,
                                                        self.lm_head.weight_t)
        return out

    def weights_of(self, part: str, layer: int) -> tuple[torch.Tensor, ...]:
        """The weights a part takes after its activations, for one layer (the head: -1)."""
        if part == "head":
            return (self.norm.weight, self.lm_head.weight_t)
        decoder = self.decoder_layers()[layer]
        return decoder.before_weights() if part == "before" else decoder.after_weights()

    def run_part(self, name: str, layer: int, *inputs: torch.Tensor) -> Any:
        return self.parts[name](*inputs)

    def decoder_layers(self) -> list[DecoderLayer]:
        return cast(list[DecoderLayer], list(self.layers))

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy Hugging Face-named tensors in, fusing q/k/v and gate/up."""
        w = {k.removeprefix("model."): v for k, v in weights.items()}
        if self.cfg.tie_word_embeddings or "lm_head.weight" not in w:
            w["lm_head.weight"] = w["embed_tokens.weight"]
        self.embed_tokens.weight.copy_(w["embed_tokens.weight"])
        self.norm.weight.copy_(w["norm.weight"])
        self.lm_head.load(w["lm_head.weight"])
        for i, layer in enumerate(self.decoder_layers()):
            p = f"layers.{i}."
            attn = [p + f"self_attn.{n}_proj" for n in "qkv"]
            layer.qkv_proj.load(torch.cat([w[a + ".weight"] for a in attn]),
                                torch.cat([w[a + ".bias"] for a in attn])
                                if self.cfg.attention_bias else None)
            layer.o_proj.load(w[p + "self_attn.o_proj.weight"])
            layer.gate_up_proj.load(torch.cat(
                [w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]]))
            layer.down_proj.load(w[p + "mlp.down_proj.weight"])
            layer.input_layernorm.weight.copy_(w[p + "input_layernorm.weight"])
            layer.post_attention_layernorm.weight.copy_(w[p + "post_attention_layernorm.weight"])
