"""Sampling parameters of one engine request (one output sequence)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GuidedKind = Literal["json_object", "json_schema", "tool_calls"]


@dataclass(frozen=True, slots=True)
class GuidedDecoding:
    """A constraint on what the request may generate, enforced token by token by the grammar
    engine (engine/guided.py). Plain text fields only, so it crosses process boundaries as is.

    - `json_object`: any JSON object.
    - `json_schema`: JSON that validates against `schema` (JSON text).
    - `tool_calls`: `begin`, then JSON that validates against `schema` (one call, e.g. an anyOf
      over the tools' `{"name": const, "arguments": parameters}`), then `end`; one call, or one
      or more when `repeat` (parallel tool calls). The model's tool-call format decides
      `begin`/`end` (`<tool_call>\\n` ... `\\n</tool_call>` for Hermes-style templates)."""

    kind: GuidedKind
    schema: str = ""
    begin: str = ""
    end: str = ""
    repeat: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("json_object", "json_schema", "tool_calls"):
            raise ValueError(f"unknown guided decoding kind {self.kind!r}")
        if self.kind != "json_object" and not self.schema:
            raise ValueError(f"guided decoding of kind {self.kind} needs a schema")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What to sample and when to stop. `n > 1` is fanned out by the client, not the engine."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the chosen token plus the top k
    include_stop_str_in_output: bool = False
    presence_penalty: float = 0.0  # OpenAI's: minus this once per token already generated
    frequency_penalty: float = 0.0  # OpenAI's: minus this times the token's count so far
    repetition_penalty: float = 1.0  # CTRL's, over prompt and output tokens; 1: off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    min_tokens: int = 0  # no eos or stop before this many tokens
    guided: GuidedDecoding | None = None
    prompt_logprobs: int | None = None  # None: none; k: each prompt token's, plus the top k

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be in [0, 2]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 disables it)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError("logprobs must be in [0, 20]")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= 20:
            raise ValueError("prompt_logprobs must be in [0, 20]")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError("presence_penalty must be in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError("frequency_penalty must be in [-2, 2]")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise ValueError("repetition_penalty must be in (0, 2]")
        if any(not -100.0 <= b <= 100.0 for _, b in self.logit_bias):
            raise ValueError("logit_bias values must be in [-100, 100]")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError("min_tokens must be in [0, max_tokens]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
