"""The logits processors of the sampling surface, over the whole batch in one pass a step:

- repetition penalty (CTRL's, as transformers' `RepetitionPenaltyLogitsProcessor`): every token
  seen in the prompt or the output so far has its logit divided by the penalty when positive,
  multiplied by it otherwise;
- OpenAI's presence and frequency penalties over the output so far:
  `logit - count * frequency_penalty - (count > 0) * presence_penalty`;
- `logit_bias`, added to the logits of its tokens;
- `min_tokens`: the stop token ids (EOS unless `ignore_eos`, and `stop_token_ids`) are masked
  until the request has that many output tokens.

Applied in that order: the repetition penalty scales the model's own logits, the rest add.
Each penalised request has a slot: a row of device tensors kept up to date by one scatter a
step (never recounted) holding its additive penalty per token, what it generated, and what
it has seen. A step costs a few passes over the penalised rows' logits. The logits come back as
a new tensor: logprobs stay the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aruntime.engine.sampling import SamplingParams


@dataclass(slots=True)
class _Request:
    params: SamplingParams
    slot: int | None  # its row in the penalty tensors; None: it asks for no penalty
    stop_ids: list[int]  # masked while num_output < min_tokens
    num_output: int = 0


class LogitsProcessors:
    """Per-request state of the processors, added and dropped with the engine's requests."""

    def __init__(self, vocab_size: int, eos_ids: frozenset[int], device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.device = device
        self._requests: dict[str, _Request] = {}
        self._free: list[int] = []
        # A row per slot: count * frequency + (count > 0) * presence for each token generated,
        # the tokens generated, the tokens seen (prompt and output), and the slot's penalties.
        self.penalty = torch.zeros(0, vocab_size, dtype=torch.float32, device=device)
        self.generated = torch.zeros(0, vocab_size, dtype=torch.bool, device=device)
        self.seen = torch.zeros(0, vocab_size, dtype=torch.bool, device=device)
        self.params = torch.zeros(0, 3, dtype=torch.float32, device=device)  # rep, freq, pres

    def add(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """A new request; nothing is kept when it asks for none of the processors. A token id
        outside the vocabulary is a ValueError, before anything is kept."""
        for name, ids in (("logit_bias", [t for t, _ in params.logit_bias]),
                          ("stop_token_ids", list(params.stop_token_ids))):
            if any(not 0 <= t < self.vocab_size for t in ids):
                raise ValueError(f"{name} token ids must be in [0, {self.vocab_size})")
        penalised = (params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0
                     or params.presence_penalty != 0.0)
        if not penalised and not params.logit_bias and not params.min_tokens:
            return
        stop_ids = sorted(set(params.stop_token_ids)
                          | (set() if params.ignore_eos else set(self.eos_ids)))
        slot = self._slot(prompt_token_ids, params) if penalised else None
        self._requests[request_id] = _Request(params, slot,
                                              stop_ids if params.min_tokens else [])

    def _slot(self, prompt_token_ids: list[int], params: SamplingParams) -> int:
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.penalty[slot].zero_()
        self.generated[slot].zero_()
        self.seen[slot].zero_()
        if params.repetition_penalty != 1.0:
            ids = torch.tensor(prompt_token_ids, dtype=torch.long, device=self.device)
            self.seen[slot, ids] = True
        self.params[slot] = torch.tensor(
            [params.repetition_penalty, params.frequency_penalty, params.presence_penalty])
        return slot

    def _grow(self) -> None:
        """Double the slots (at least 4); the old rows keep their slot numbers."""
        old = self.penalty.shape[0]
        more = max(4, old)
        self.penalty = torch.cat([self.penalty, self.penalty.new_zeros(more, self.vocab_size)])
        self.generated = torch.cat([self.generated,
                                    self.generated.new_zeros(more, self.vocab_size)])
        self.seen = torch.cat([self.seen, self.seen.new_zeros(more, self.vocab_size)])
        self.params = torch.cat([self.params, self.params.new_zeros(more, 3)])
        self._free.extend(range(old + more - 1, old - 1, -1))  # lowest slot popped first

    def drop(self, request_id: str) -> None:
        req = self._requests.pop(request_id, None)
        if req is not None and req.slot is not None:
            self._free.append(req.slot)

    def apply(self, logits: torch.Tensor, request_ids: list[str]) -> torch.Tensor:
        """The processed logits of the batch (row i is `request_ids[i]`); `logits` itself when
        no row asks for a processor, else a new tensor."""
        reqs = [(i, r) for i, rid in enumerate(request_ids)
                if (r := self._requests.get(rid)) is not None]
        if not reqs:
            return logits
        out = logits.clone()
        penalised = [(i, r) for i, r in reqs if r.slot is not None]
        if penalised:
            self._penalise(out, penalised)
        bias = [(i, t, b) for i, r in reqs for t, b in r.params.logit_bias]
        if bias:
            rows, ids, values = zip(*bias, strict=True)
            out.index_put_(self._index(rows, ids),
                           torch.tensor(values, dtype=out.dtype, device=out.device),
                           accumulate=True)
        masked = [(i, t) for i, r in reqs if r.num_output < r.params.min_tokens
                  for t in r.stop_ids]
        if masked:
            rows, ids = zip(*masked, strict=True)
            out.index_put_(self._index(rows, ids), torch.tensor(float("-inf"), device=out.device))
        return out

    def _penalise(self, out: torch.Tensor, penalised: list[tuple[int, _Request]]) -> None:
        """In place on `out`'s penalised rows (on `out` itself when that is every row)."""
        rows, slots = torch.tensor([(i, r.slot) for i, r in penalised], dtype=torch.long,
                                   device=out.device).unbind(1)
        whole = len(penalised) == out.shape[0]  # rows are 0..n-1 in order, as built
        x = out if whole else out[rows]
        if any(r.params.repetition_penalty != 1.0 for _, r in penalised):
            rep = self.params[slots, :1]
            scaled = torch.where(x > 0, x / rep, x * rep)
            x.copy_(torch.where(self.seen[slots], scaled, x))
        if any(r.params.frequency_penalty or r.params.presence_penalty for _, r in penalised):
            x.sub_(self.penalty[slots])
        if not whole:
            out[rows] = x

    def _index(self, rows: tuple[int, ...], ids: tuple[int, ...],
               ) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = torch.tensor([rows, ids], dtype=torch.long, device=self.device)
        return pairs[0], pairs[1]

    def record(self, request_ids: list[str], tokens: list[int]) -> None:
        """Account for the tokens just sampled (row i's is `tokens[i]`), before any is dropped:
        one scatter for the whole batch."""
        pairs = []
        for rid, tok in zip(request_ids, tokens, strict=True):
            req = self._requests.get(rid)
            if req is None:
                continue
            req.num_output += 1
            if req.slot is not None:
                pairs.append((req.slot, tok))
        if not pairs:
            return
        slots, ids = torch.tensor(pairs, dtype=torch.long, device=self.device).unbind(1)
        _, freq, pres = self.params[slots].unbind(1)
        first = ~self.generated[slots, ids]
        self.penalty.index_put_((slots, ids), freq + pres * first, accumulate=True)
        self.generated[slots, ids] = True
        self.seen[slots, ids] = True
