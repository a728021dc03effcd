"""What the engine reports per step: typed structs that cross the process boundary."""

from __future__ import annotations

import msgspec


class TokenLogprob(msgspec.Struct, array_like=True):
    """The sampled token's logprob and the top alternatives (token id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


class RequestOutput(msgspec.Struct):
    """A delta for one request: tokens and text produced since its previous output."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that matched
    logprobs: list[TokenLogprob] | None = None
    # With the first output only, when asked: one per prompt token, None for the first (it has
    # no context); each the logprob of that prompt token given the ones before it.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    arrival_time: float = 0.0  # time.time() of arrival at the engine
    scheduled_time: float | None = None  # first time the scheduler gave it tokens
    first_token_time: float | None = None
    finish_time: float | None = None


class TierStats(msgspec.Struct):
    """One KV tier below the device (transport, host, disk, redis)."""

    tier: str
    hits: int
    misses: int
    stale: int
    evictions: int
    stored_bytes: int
    load_seconds_sum: float
    load_buckets: list[int]  # counts per upper bound in LOAD_BUCKETS_S, then +Inf
    restore_bytes: int = 0  # KV bytes loaded from this tier into device blocks
    restore_seconds: float = 0.0  # the time those loads took, reads and copies included


class EngineStats(msgspec.Struct):
    """A snapshot for /metrics and /health."""

    num_running: int
    num_waiting: int
    num_preempted_total: int
    kv_usage: float  # fraction of KV blocks in use
    num_blocks: int
    num_free_blocks: int
    prefix_query_tokens_total: int
    prefix_hit_tokens_total: int
    prompt_tokens_total: int
    generation_tokens_total: int
    tier_hit_tokens_total: int = 0  # prompt tokens restored from tiers below the device
    rank_restarts_total: int = 0  # a parallel group's restarts after a rank was lost
    tiers: list[TierStats] = []
