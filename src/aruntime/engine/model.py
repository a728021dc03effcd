"""The Llama-family decoder (Llama, Mistral, Qwen2): RMSNorm, RoPE, grouped-query attention,
SwiGLU, optional q/k/v bias. One definition; KV lives in the paged cache the runner owns.

Tokens of all scheduled sequences are flattened into one [T, hidden] batch so every projection
is a single large matmul; only attention is split (see `attention.py`).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from aruntime.engine.attention import AttentionBatch, paged_attention
from aruntime.engine.config import ModelConfig


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
        if x.dtype == torch.float32:  # one fused kernel instead of five elementwise passes
            return nn.functional.rms_norm(x, self.weight.shape, self.weight, self.eps)
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


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


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's half-split rotation: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


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

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                batch: AttentionBatch) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(self.input_layernorm(x))
        # q and k heads sit side by side in the fused output: rotate them in one pass.
        qk = apply_rotary(qkv[:, :self.split[0] + self.split[1]].view(t, -1, self.head_dim), *rope)
        q, k = torch.split(qk, [self.num_heads, self.num_kv_heads], dim=1)
        v = qkv[:, self.split[0] + self.split[1]:].view(t, self.num_kv_heads, self.head_dim)
        attn = paged_attention(q, k, v, batch, self.layer_idx)
        x = x + self.o_proj(attn.reshape(t, -1))
        gate, up = self.gate_up_proj(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        out: torch.Tensor = x + self.down_proj(nn.functional.silu(gate) * up)
        return out


class LlamaForCausalLM(nn.Module):
    """Serves LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM checkpoints."""

    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Dense(cfg.hidden_size, cfg.vocab_size)
        self.rotary = Rotary(cfg, max_positions)

    def forward(self, token_ids: torch.Tensor, batch: AttentionBatch,
                logits_rows: torch.Tensor) -> torch.Tensor:
        """Logits for the rows in `logits_rows` only: the LM head is the largest matmul, and only
        each sampling sequence's last token needs it."""
        x = self.embed_tokens(token_ids)
        rope = self.rotary.tables(batch.positions, x.dtype)
        for layer in self.decoder_layers():
            x = layer(x, rope, batch)
        logits: torch.Tensor = self.lm_head(self.norm(x[logits_rows])).float()
        return logits

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
