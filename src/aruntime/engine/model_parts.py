"""The decoder's dense parts as functions of their inputs and weights: before attention (norm,
fused q/k/v projection, rotary), after attention (output projection, residual, norm, SwiGLU
MLP, residual), and the head (norm, LM head). The eager model calls them, and backends compile
them (engine/backends/): the weights are inputs, not constants, so one compiled graph serves
every layer, and the paged attention between them stays in the engine.
"""

from __future__ import annotations

import torch
from torch import nn

from aruntime.engine.config import ModelConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused kernel instead of five elementwise passes
        return nn.functional.rms_norm(x, weight.shape, weight, eps)
    var = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(var + eps)).to(x.dtype) * weight


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's half-split rotation: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class BeforeAttention(nn.Module):
    """x [T, hidden], cos/sin [T, 1, head_dim] -> q [T, heads, d], k and v [T, kv_heads, d]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.eps, self.head_dim = cfg.rms_norm_eps, cfg.head_dim
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads

    def project(self, x: torch.Tensor, ln_w: torch.Tensor, qkv_w: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, ln_w, self.eps) @ qkv_w

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ln_w: torch.Tensor,
                qkv_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.split(self.project(x, ln_w, qkv_w), cos, sin)

    def split(self, qkv: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t, d = qkv.shape[0], self.head_dim
        qk_size = (self.heads + self.kv_heads) * d
        # q and k heads sit side by side in the fused output: rotate them in one pass
        qk = apply_rotary(qkv[:, :qk_size].reshape(t, -1, d), cos, sin)
        q, k = torch.split(qk, [self.heads, self.kv_heads], dim=1)
        return q, k, qkv[:, qk_size:].reshape(t, self.kv_heads, d)


class BeforeAttentionBias(BeforeAttention):
    """The same, for checkpoints with q/k/v bias (Qwen2)."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,  # type: ignore[override]
                ln_w: torch.Tensor, qkv_w: torch.Tensor,
                qkv_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.split(torch.addmm(qkv_b, rms_norm(x, ln_w, self.eps), qkv_w), cos, sin)


class AfterAttention(nn.Module):
    """x [T, hidden], attn [T, heads * d] -> the layer's output [T, hidden]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.eps = cfg.rms_norm_eps

    def forward(self, x: torch.Tensor, attn: torch.Tensor, o_w: torch.Tensor,
                ln_w: torch.Tensor, gate_up_w: torch.Tensor,
                down_w: torch.Tensor) -> torch.Tensor:
        x = x + attn @ o_w
        gate, up = (rms_norm(x, ln_w, self.eps) @ gate_up_w).chunk(2, dim=-1)
        out: torch.Tensor = x + (nn.functional.silu(gate) * up) @ down_w
        return out


class Head(nn.Module):
    """x [R, hidden] (the rows that sample) -> float32 logits [R, vocab]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.eps = cfg.rms_norm_eps

    def forward(self, x: torch.Tensor, norm_w: torch.Tensor, lm_w: torch.Tensor) -> torch.Tensor:
        return (rms_norm(x, norm_w, self.eps) @ lm_w).float()


def parts_of(cfg: ModelConfig) -> dict[str, nn.Module]:
    """The three parts of this model, by name."""
    before = BeforeAttentionBias(cfg) if cfg.attention_bias else BeforeAttention(cfg)
    return {"before": before, "after": AfterAttention(cfg), "head": Head(cfg)}
