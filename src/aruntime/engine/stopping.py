"""Per-request stop checks and streamed text: stop tokens, stop strings, length limits.

Text is held back by (longest stop string - 1) characters while streaming, so a stop string
split across tokens is never half-sent to the client.
"""

from __future__ import annotations

from aruntime.engine.sampling import SamplingParams
from aruntime.engine.tokenizer import IncrementalDetokenizer, Tokenizer


class StopChecker:
    def __init__(self, tokenizer: Tokenizer, params: SamplingParams, eos_ids: frozenset[int],
                 max_model_len: int, num_prompt_tokens: int) -> None:
        self.params = params
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else eos_ids)
        self.max_total = max_model_len
        self.num_prompt_tokens = num_prompt_tokens
        self.hold = max((len(s) for s in params.stop), default=1) - 1
        self.pending = ""
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    def push(self, token_id: int, num_output: int) -> str:
        """Account for one sampled token; returns the text that may be sent now."""
        if token_id in self.stop_ids:
            self.finish_reason = "stop"
            self.stop_reason = token_id if token_id in self.params.stop_token_ids else None
            return self._flush()
        self.pending += self.detok.push([token_id])
        if self.params.stop and self._match_stop():
            return self._flush()
        if (num_output >= self.params.max_tokens
                or self.num_prompt_tokens + num_output >= self.max_total):
            self.finish_reason = "length"
            return self._flush()
        if self.hold and len(self.pending) > self.hold:
            text, self.pending = self.pending[:-self.hold], self.pending[-self.hold:]
            return text
        if self.hold:
            return ""
        return self._flush()

    def finish(self, reason: str) -> str:
        """End for a reason outside these checks (the grammar is complete): the held text."""
        self.finish_reason = reason
        return self._flush()

    def _match_stop(self) -> bool:
        found = [(i, s) for s in self.params.stop if (i := self.pending.find(s)) >= 0]
        if not found:
            return False
        i, s = min(found)
        self.pending = self.pending[:i] + (s if self.params.include_stop_str_in_output else "")
        self.finish_reason, self.stop_reason = "stop", s
        return True

    def _flush(self) -> str:
        """Finishing: send what is held back, including a character cut off mid-bytes."""
        text, self.pending = self.pending, ""
        if not isinstance(self.stop_reason, str):  # after a stop string, the rest is dropped
            text += self.detok.finish()
        return text
