"""Routing policies and scoring, pure: no processes, no sockets."""

from __future__ import annotations

import random

import pytest

from aruntime.cluster.router import RoutePolicy, Router, WorkerLoad
from aruntime.engine.sampling import SamplingParams
from aruntime.engine.sequence import Sequence
from aruntime.kv.directory_index import PrefixMatch
from aruntime.kv.keys import SHARED_NAMESPACE, CacheScope, KeyScheme, request_keys

IDLE = [WorkerLoad("w0"), WorkerLoad("w1"), WorkerLoad("w2")]


def match(worker: str, **by_tier: int) -> PrefixMatch:
    return PrefixMatch(worker, min(by_tier), sum(by_tier.values()), by_tier)


def test_keys_match_the_engines_for_tenants_and_shared_prefixes() -> None:
    scheme = KeyScheme(4, "sha256:rev")
    tokens = [random.Random(0).randrange(1000) for _ in range(37)]
    for salt, shared in ((b"", 0), (b"tenant", 0), (b"tenant", 8), (b"t", 10)):
        seq = Sequence("r", tokens, SamplingParams(), scheme.root(salt),
                       shared_root=scheme.root(SHARED_NAMESPACE), shared_blocks=shared // 4)
        assert request_keys(scheme, tokens, CacheScope(salt, shared)) == seq.block_keys(4, 9)


def test_kv_prefers_the_worker_with_the_longest_cached_prefix() -> None:
    router = Router("kv", block_size=16)
    d = router.choose(IDLE, [match("w1", device=4), match("w2", device=1)], 100)
    assert d.worker == "w1" and d.predicted_cached_tokens == 64
    assert d.scores["w1"] < d.scores["w2"] < d.scores["w0"]


def test_tiers_are_weighted_by_restore_cost() -> None:
    router = Router("kv", block_size=16)
    d = router.choose(IDLE, [match("w0", disk=4), match("w1", host=4)], 100)
    assert d.worker == "w1"
    assert d.scores["w0"] == pytest.approx(100 - 2 * 4 * 16 * 0.6)  # a cached token: 2 queued
    assert d.scores["w1"] == pytest.approx(100 - 2 * 4 * 16 * 0.9)


def test_the_shared_redis_tier_counts_for_every_worker_beyond_its_own_blocks() -> None:
    router = Router("kv", block_size=16)
    matches = [match("redis", redis=5), match("w2", device=2)]
    assert router.predicted("w0", matches, 200) == (80, 5 * 16 * 0.5)
    assert router.predicted("w2", matches, 200) == (80, 2 * 16 + 3 * 16 * 0.5)
    assert router.choose(IDLE, matches, 200).worker == "w2"


def test_at_least_one_prompt_token_is_computed() -> None:
    router = Router("kv", block_size=16)
    assert router.predicted("w0", [match("w0", device=4)], 64)[0] == 48


def test_load_outweighs_a_small_hit() -> None:
    router = Router("kv", block_size=16)
    router.sent("w1", 500)
    d = router.choose([router.load(w) for w in ("w0", "w1")], [match("w1", device=2)], 100)
    assert d.worker == "w0" and d.predicted_cached_tokens == 0
    router.finished("w1", 500, prefilled=False)
    assert router.load("w1") == WorkerLoad("w1", 0, 0, 0)


def test_load_follows_a_request_through_prefill_and_decode() -> None:
    router = Router(RoutePolicy("kv", decode_weight=10, request_weight=50), block_size=16)
    router.sent("w0", 80)
    assert router.load("w0") == WorkerLoad("w0", 80, 0, 1)
    assert router.cost(router.load("w0"), 0.0, 0) == 130
    router.prefilled("w0", 80)
    assert router.load("w0") == WorkerLoad("w0", 0, 1, 0)
    assert router.cost(router.load("w0"), 0.0, 0) == 10
    router.finished("w0", 80, prefilled=True)
    assert router.load("w0") == WorkerLoad("w0", 0, 0)


def test_cold_requests_spread_under_kv() -> None:
    router = Router("kv", block_size=16)
    assert [router.choose(IDLE, [], 50).worker for _ in range(3)] == ["w0", "w1", "w2"]


def test_round_robin_random_and_least_loaded_ignore_the_cache() -> None:
    hot = [match("w0", device=8)]
    rr = Router("round-robin")
    assert [rr.choose(IDLE, hot, 200).worker for _ in range(4)] == ["w0", "w1", "w2", "w0"]
    rnd = Router("random", seed=1)
    assert {rnd.choose(IDLE, hot, 200).worker for _ in range(30)} == {"w0", "w1", "w2"}
    ll = Router("least-loaded")
    loads = [WorkerLoad("w0", 50, 0), WorkerLoad("w1", 0, 1), WorkerLoad("w2", 30, 0)]
    d = ll.choose(loads, hot, 200)
    assert d.worker == "w1" and d.predicted_cached_tokens == 0  # predicted for where it went


def test_unknown_policy_and_no_candidates_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown router policy"):
        Router("fastest")
    with pytest.raises(ValueError, match="no candidate"):
        Router().choose([], [], 10)
