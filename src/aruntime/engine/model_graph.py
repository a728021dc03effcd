"""The whole decode step as one graph, the KV cache as explicit inputs and outputs: every layer's
dense parts and attention, then the head, in one call — what a graph runtime needs to win,
where calling it per part crossed into it 61 times a step (engine/backends/graph.py runs it).

Inputs: the step's token ids [B], the rotary tables at their positions [B, 1, d], each layer's
past K and V gathered dense from the paged cache [layers, kv_heads, B, C, d] with the mask of
the context each row holds [B, C] (True: a cached token). Outputs: the logits [B, vocab] and
each layer's new K and V [layers, B, kv_heads, d], which the engine writes into the paged cache.
The paged gather and scatter stay in the engine around it; the weights are the model's own,
held as buffers, so an export binds them as constants. Grouped-query heads ride against their
shared KV head as the query-length axis, as the engine's decode attention does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aruntime.engine.model import HEAD, LlamaForCausalLM


class DecodeGraph(nn.Module):
    def __init__(self, model: LlamaForCausalLM) -> None:
        super().__init__()
        cfg = model.cfg
        self.layers, self.heads = cfg.num_hidden_layers, cfg.num_attention_heads
        self.kv_heads, self.head_dim = cfg.num_key_value_heads, cfg.head_dim
        self.parts = model.parts  # not submodules: they hold no weights
        self.register_buffer("embed", model.embed_tokens.weight.detach())
        self._counts: dict[str, int] = {}
        for part in ("before", "after"):
            for i in range(self.layers):
                self._bind(f"{part}{i}", model.weights_of(part, i))
        self._bind("head", model.weights_of("head", HEAD))

    def _bind(self, name: str, weights: tuple[torch.Tensor, ...]) -> None:
        self._counts[name] = len(weights)
        for j, w in enumerate(weights):
            self.register_buffer(f"{name}_{j}", w.detach())

    def _weights(self, name: str) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f"{name}_{j}") for j in range(self._counts[name]))

    def forward(self, token_ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past_k: torch.Tensor, past_v: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        embed: torch.Tensor = self.embed  # type: ignore[assignment]  # a buffer
        x = F.embedding(token_ids, embed)
        b = x.shape[0]
        # each row attends to its cached context and to itself
        full = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)[None, :, None, :]
        new_k, new_v = [], []
        for i in range(self.layers):
            q, k, v = self.parts["before"](x, cos, sin, *self._weights(f"before{i}"))
            new_k.append(k)
            new_v.append(v)
            keys = torch.cat([past_k[i], k.transpose(0, 1).unsqueeze(2)], dim=2)
            values = torch.cat([past_v[i], v.transpose(0, 1).unsqueeze(2)], dim=2)
            qd = q.reshape(b, self.kv_heads, self.heads // self.kv_heads,
                           self.head_dim).transpose(0, 1)
            o = F.scaled_dot_product_attention(qd, keys, values, attn_mask=full)
            attn = o.transpose(0, 1).reshape(b, self.heads * self.head_dim)
            x = self.parts["after"](x, attn, *self._weights(f"after{i}"))
        logits = self.parts["head"](x, *self._weights("head"))
        return logits, torch.stack(new_k), torch.stack(new_v)
