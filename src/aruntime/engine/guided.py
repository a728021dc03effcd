"""Constrained decoding in the engine: each distinct `GuidedDecoding` compiled once (LRU), a
matcher per guided sequence, and each step's bitmasks for the guided rows of the sampling batch,
applied to the logits at once before sampling. The grammars themselves
are engine/guided_grammar.py's.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import llguidance
import numpy as np
import torch

from aruntime.engine.guided_grammar import GuidedDecodingError, explain, grammar_of
from aruntime.engine.sampling import GuidedDecoding
from aruntime.engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class GuidedMatcher:
    """One sequence's place in its grammar. Advanced by every token the sequence accepts; a
    preempted sequence keeps it, since recomputing its tokens samples none of them again."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher

    def accept(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            logger.warning("guided decoding: token %d rejected: %s", token_id,
                           self.matcher.get_error())

    @property
    def done(self) -> bool:
        """The grammar is complete (nothing may follow) or broken: the sequence ends here."""
        return self.matcher.is_stopped() or self.matcher.is_error()


class GuidedDecoder:
    """One engine's grammars: its tokenizer as llguidance sees it (built on first use, ~1 s for
    a 50k vocabulary), compiled specs (LRU), and the batch masking."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_ids: frozenset[int],
                 capacity: int = 64) -> None:
        self._tokenizer = tokenizer
        # The embedding may have rows past the tokenizer's ids: they have no text, never allowed.
        self.vocab_size = vocab_size
        self._eos = sorted(eos_ids)
        self._capacity = capacity
        self._compiled: OrderedDict[GuidedDecoding, llguidance.LLMatcher] = OrderedDict()
        self._ll: llguidance.LLTokenizer | None = None
        backend = tokenizer.backend
        self._specials = {t.content: i for i, t in backend.get_added_tokens_decoder().items()
                          if t.special}

    def _lltokenizer(self) -> llguidance.LLTokenizer:
        if self._ll is None:
            n_vocab = max(self.vocab_size, self._tokenizer.backend.get_vocab_size(True))
            self._ll = llguidance.LLTokenizer(self._tokenizer.backend.to_str(), n_vocab=n_vocab,
                                              eos_token=self._eos or None)
        return self._ll

    def matcher(self, spec: GuidedDecoding) -> GuidedMatcher:
        """A fresh matcher for one sequence; the spec is compiled the first time it is seen."""
        compiled = self._compiled.get(spec)
        if compiled is None:
            compiled = llguidance.LLMatcher(self._lltokenizer(),
                                            grammar_of(spec, self._specials))
            if compiled.is_error():
                raise GuidedDecodingError(f"{spec.kind}: {explain(compiled.get_error())}")
            self._compiled[spec] = compiled
            if len(self._compiled) > self._capacity:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(spec)
        return GuidedMatcher(compiled.deep_copy())

    def mask(self, logits: torch.Tensor, matchers: list[GuidedMatcher | None]) -> torch.Tensor:
        """`logits` with each guided row's disallowed tokens at -inf (a new tensor; rows
        without a matcher are as they were, and `logits` itself is untouched, so logprobs stay
        the model's). Each row's bitmask is filled in turn (on a few shared cores, llguidance's
        thread pool cost more than it saved), then all are unpacked and applied at once."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return logits
        words = (self._lltokenizer().vocab_size + 31) // 32
        bitmask = torch.zeros((len(rows), words), dtype=torch.int32)
        for j, i in enumerate(rows):
            m = matchers[i]
            assert m is not None
            m.matcher.unsafe_compute_mask_ptr(bitmask[j].data_ptr(), words * 4)
        # Bit k of word w allows token 32w + k; int32 words are little-endian in memory.
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")
        width = logits.shape[1]
        if bits.shape[1] < width:
            bits = np.pad(bits, ((0, 0), (0, width - bits.shape[1])))
        allowed = bits[:, :width].astype(bool)
        if len(rows) < logits.shape[0]:
            idx = torch.tensor(rows, device=logits.device)
            return logits.index_put((idx,), _masked(logits[idx], allowed))
        return _masked(logits, allowed)


def _masked(logits: torch.Tensor, allowed: np.ndarray[Any, Any]) -> torch.Tensor:
    """-inf where not allowed. On CPU in numpy: one pass on one core, where torch's thread pool
    took 10x longer for a batch of 32k-wide rows on shared cores."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return torch.from_numpy(np.where(allowed, logits.numpy(), np.float32(-np.inf)))
    return logits.masked_fill(~torch.from_numpy(allowed).to(logits.device), float("-inf"))
