"""Per-tenant quotas: the buckets on an injected clock, and through a real server — one tenant
held at its limit (429 with Retry-After, OpenAI's shape) while another is still admitted, and a
concurrency cap whose leases come back however a request ends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model
from aruntime.policy.quotas import Limits, QuotaExceeded, Quotas
from aruntime.serve.launch import BackgroundServer, background_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_refill_and_say_when_to_retry() -> None:
    clock = Clock()
    q = Quotas(Limits(rpm=2), clock=clock)
    q.acquire("a", 1).release()
    q.acquire("a", 1).release()
    with pytest.raises(QuotaExceeded) as info:
        q.acquire("a", 1)
    assert info.value.reason == "rpm" and info.value.retry_after_s == 30
    q.acquire("b", 1)  # another tenant has its own bucket
    clock.now += 30  # a minute's allowance refills over a minute: one request in 30 s
    q.acquire("a", 1)


def test_tokens_are_settled_on_what_was_used() -> None:
    clock = Clock()
    q = Quotas(Limits(tpm=100), clock=clock)
    lease = q.acquire("a", 90)
    with pytest.raises(QuotaExceeded) as info:
        q.acquire("a", 20)
    assert info.value.reason == "tpm" and info.value.retry_after_s == 6
    lease.release(used_tokens=30)  # 60 unused come back
    q.acquire("a", 60)
    huge = q.acquire("b", 10_000)  # larger than a minute's allowance: waits for a full bucket
    assert huge.tokens == 100


def test_the_concurrency_cap_counts_leases_in_flight() -> None:
    q = Quotas(Limits(max_concurrent=1), overrides={"vip": Limits(max_concurrent=3)})
    first = q.acquire("a", 1)
    with pytest.raises(QuotaExceeded) as info:
        q.acquire("a", 1)
    assert info.value.reason == "concurrency"
    first.release()
    first.release()  # once only
    assert q.running("a") == 0
    held = [q.acquire("vip", 1) for _ in range(3)]
    assert q.running("vip") == 3 and held


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="rpm"):
        Limits(rpm=0)


# ---- through a real server ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    config = EngineConfig(model=str(resolve_model("demo")), max_model_len=2048,
                          kv_cache_bytes=32 * 1024 * 1024)
    quotas = Quotas(Limits(max_concurrent=2), overrides={"small": Limits(rpm=2)})
    with background_server(config, tmp_path_factory.mktemp("quotas"), served_model_name="tiny",
                           quotas=quotas) as srv:
        yield srv


@pytest.fixture
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def body(tenant: str, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": "hi", "max_tokens": 2, "aruntime": {"tenant": tenant},
            **extra}


def test_a_tenant_at_its_limit_is_refused_while_another_is_admitted(http: httpx.Client) -> None:
    assert [http.post("/v1/completions", json=body("small")).status_code
            for _ in range(2)] == [200, 200]
    refused = http.post("/v1/completions", json=body("small"))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    err = refused.json()["error"]
    assert err["type"] == "rate_limit_exceeded" and err["code"] == "rate_limit_exceeded"
    assert http.post("/v1/completions", json=body("other")).status_code == 200
    assert 'aruntime:quota_rejections_total{limit="rpm"} 1.0' in http.get("/metrics").text


def test_one_tenants_flood_cannot_take_another_tenants_place(server: BackgroundServer,
                                                             http: httpx.Client) -> None:
    quotas = server.app.state.server.quotas
    # seconds of decoding each: far longer than the few calls made while they are in flight
    long = body("flood", max_tokens=2000, stream=True, temperature=1.0, min_tokens=2000)
    with http.stream("POST", "/v1/completions", json=long) as one, \
            http.stream("POST", "/v1/completions", json=long) as two:
        assert (one.status_code, two.status_code) == (200, 200)
        lines = [one.iter_lines(), two.iter_lines()]  # kept: a dropped iterator closes its stream
        for it in lines:
            next(it)  # each is in flight
        assert quotas.running("flood") == 2
        third = http.post("/v1/completions", json=body("flood"))
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert http.post("/v1/completions", json=body("calm")).status_code == 200
    # both streams closed by the client mid-way: the server notices, and their leases are back
    assert quotas.wait_running("flood", 0, timeout=30)
    with httpx.Client(base_url=server.url, timeout=60) as fresh:
        assert fresh.post("/v1/completions", json=body("flood")).status_code == 200


def test_a_quota_file_is_checked_at_start(tmp_path: Path) -> None:
    import argparse

    from aruntime.errors import UsageError
    from aruntime.policy.quota_args import add_arguments, quotas_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"a": {"rpm": 5}, "b": {"tpm": 100, "max_concurrent": 2}}))
    q = quotas_from(parser.parse_args(["--quota-file", str(path), "--tenant-rpm", "60"]))
    assert q.limits("a") == Limits(rpm=5) and q.limits("zzz") == Limits(rpm=60)
    path.write_text(json.dumps({"a": {"rps": 5}}))
    with pytest.raises(UsageError, match="rpm, tpm and max_concurrent"):
        quotas_from(parser.parse_args(["--quota-file", str(path)]))


def test_idle_tenants_are_forgotten_but_busy_ones_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    import aruntime.policy.quotas as quotas

    monkeypatch.setattr(quotas, "TENANTS_KEPT", 4)
    clock = Clock()
    q = Quotas(Limits(rpm=10, max_concurrent=5), clock=clock)
    busy = q.acquire("busy", 1)
    for i in range(3):
        q.acquire(f"t{i}", 1).release()
    clock.now += 60  # their buckets refill: they look like new tenants again
    q.acquire("late", 1)
    assert "t0" not in q._tenants and q.running("busy") == 1
    busy.release()
