"""Turns logits into tokens: greedy, temperature, top-k, top-p, per-request seeds, logprobs
(of sampled tokens and of prompt tokens)."""

from __future__ import annotations

import torch

from aruntime.engine.outputs import TokenLogprob
from aruntime.engine.sampling import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> list[int]:
    """One token per row. Seeded rows draw from their own generator, so a request's samples do
    not depend on what else is in the batch."""
    tokens = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        idx = torch.tensor(rows, device=logits.device)
        probs = _filtered_probs(logits[idx], [params[i] for i in rows])
        shared = [j for j, i in enumerate(rows) if generators[i] is None]
        if shared:
            tokens[idx[shared]] = torch.multinomial(probs[shared], 1).squeeze(1)
        for j, i in enumerate(rows):
            if generators[i] is not None:
                tokens[i] = torch.multinomial(probs[j], 1, generator=generators[i])[0]
    return tokens.tolist()


def _filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    dev = logits.device
    # Each row's best logit shifted to 0 (a penalty's +inf made finite first) and the
    # temperature kept above 0 in float32: a temperature or top_p as small as 5e-324, or a
    # repetition penalty that small, then gives -inf (or the best token alone), never nan.
    big = torch.finfo(logits.dtype).max
    logits = logits.nan_to_num(nan=float("-inf"), posinf=big, neginf=float("-inf"))
    logits = logits - logits.max(dim=-1, keepdim=True).values
    temps = torch.tensor([p.temperature for p in params], device=dev, dtype=logits.dtype)
    logits = logits / temps.clamp(min=torch.finfo(logits.dtype).tiny).unsqueeze(1)
    top_k = [p.top_k for p in params]
    if any(top_k):
        k = torch.tensor([k if k > 0 else logits.shape[1] for k in top_k], device=dev)
        kth = logits.sort(dim=-1, descending=True).values.gather(
            1, (k.clamp(max=logits.shape[1]) - 1).unsqueeze(1))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    top_p = [p.top_p for p in params]
    if any(p < 1.0 for p in top_p):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # keep a token while the mass before it is below top_p (the first token always stays)
        drop = (cum - sorted_logits.softmax(-1)) >= torch.tensor(top_p, device=dev).unsqueeze(1)
        drop[:, 0] = False  # even a top_p that float32 rounds to 0
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return logits.softmax(dim=-1)


def logprobs_of(logits_row: torch.Tensor, token_id: int, k: int) -> TokenLogprob:
    """The model's own log-probabilities (before temperature), as OpenAI reports them."""
    lp = torch.log_softmax(logits_row.float(), dim=-1)
    top: list[tuple[int, float]] = []
    if k:
        values, ids = lp.topk(k)
        top = list(zip(ids.tolist(), values.tolist(), strict=False))
    return TokenLogprob(token_id, float(lp[token_id]), top)


def prompt_logprobs_of(logits: torch.Tensor, token_ids: list[int], k: int) -> list[TokenLogprob]:
    """Row i's log-probability of `token_ids[i]` (the prompt token after row i's position) and
    the row's top k, the whole span at once."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.tensor(token_ids, dtype=torch.long, device=lp.device)
    chosen = lp.gather(1, ids[:, None])[:, 0].tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in token_ids]
    if k:
        values, top_ids = lp.topk(k, dim=-1)
        tops = [list(zip(i, v, strict=True))
                for i, v in zip(top_ids.tolist(), values.tolist(), strict=True)]
    return [TokenLogprob(t, c, top) for t, c, top in zip(token_ids, chosen, tops, strict=True)]
