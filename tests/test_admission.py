"""Admission control: the predictor on its own, then a real server refusing (429) what its queue
would make miss, while admitting what it can serve."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aruntime.cluster.router import WorkerLoad
from aruntime.contracts.request import SLO
from aruntime.engine.config import EngineConfig
from aruntime.engine.outputs import RequestOutput
from aruntime.serve.admission import Admission, Costs
from aruntime.serve.launch import BackgroundServer, background_server

MODEL = "tiny"


def _finished(prompt: int, cached: int, sched: float, first: float, end: float) -> RequestOutput:
    return RequestOutput("r", [1], "", True, "length", num_prompt_tokens=prompt,
                         num_cached_tokens=cached, arrival_time=sched, scheduled_time=sched,
                         first_token_time=first, finish_time=end)


def test_costs_learn_from_timings() -> None:
    costs = Costs()
    # one step of 10 ms, then 100 computed tokens at 1 ms each; 11 tokens, 10 gaps of 10 ms
    costs.observe(_finished(100, 0, 100.0, 100.11, 100.21), num_generated=11, batch=1)
    assert costs.step_s == pytest.approx(0.01)
    assert costs.prefill_s_per_token == pytest.approx(0.001)
    costs.observe(_finished(100, 0, 200.0, 200.11, 200.41), num_generated=11, batch=1)
    assert 0.01 < costs.step_s < 0.03  # moved toward 30 ms, not jumped
    costs.observe(RequestOutput("a", [], "", True, "abort"), 0, 1)  # aborted: nothing learned
    assert costs.observed == 2


def test_prediction_grows_with_the_queue() -> None:
    adm = Admission(Costs(prefill_s_per_token=0.001, step_s=0.01))
    idle = adm.predict(WorkerLoad("w0"), 100)
    busy = adm.predict(WorkerLoad("w0", queued_prefill_tokens=5000, running=8,
                                  queued_requests=4), 100)
    assert idle.ttft_s == pytest.approx(0.1 + 0.01)
    assert busy.ttft_s > idle.ttft_s + 5.0
    assert busy.tpot_s > idle.tpot_s


def test_check_admits_when_some_worker_meets_the_slo() -> None:
    adm = Admission(Costs(prefill_s_per_token=0.001, step_s=0.01))
    idle = adm.predict(WorkerLoad("w0"), 100)
    busy = adm.predict(WorkerLoad("w1", queued_prefill_tokens=5000), 100)
    slo = SLO(ttft_ms=500)
    assert adm.check(None, [busy]) is None  # no SLO: always admitted
    assert adm.check(SLO(), [busy]) is None
    assert adm.check(slo, [busy, idle]) is None
    miss = adm.check(slo, [busy])
    assert miss is not None and miss.reason == "ttft"
    assert "5110 ms" in miss.message and "500 ms" in miss.message
    assert miss.retry_after_s == 5  # ceil(5.11 - 0.5)
    tpot = adm.check(SLO(tpot_ms=1), [idle])
    assert tpot is not None and tpot.reason == "tpot" and "1 ms" in tpot.message


# ---- a real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[BackgroundServer]:
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=4 * 1024 * 1024,
                          max_model_len=256)
    with background_server(config, tmp_path_factory.mktemp("data"),
                           served_model_name=MODEL) as srv:
        yield srv


def _gauge(http: httpx.Client, name: str) -> float:
    text = http.get("/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name)


def test_saturated_server_refuses_a_tight_ttft_and_admits_a_loose_one(
        server: BackgroundServer) -> None:
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                        timeout=60)
    # warm up: the admission costs are learned from this request's own timings
    oai.completions.create(model=MODEL, prompt=list(range(5, 69)), max_tokens=8,
                           extra_body={"ignore_eos": True})
    results: list[int] = []

    def long_request(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as h:
            r = h.post("/v1/completions", json={
                "model": MODEL, "prompt": [(7 * i + t) % 500 + 3 for t in range(96)],
                "max_tokens": 150, "ignore_eos": True})
            results.append(r.status_code)

    load = [threading.Thread(target=long_request, args=(i,)) for i in range(4)]
    for t in load:
        t.start()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        deadline = time.monotonic() + 30
        while (_gauge(http, "aruntime:num_requests_running")
               + _gauge(http, "aruntime:num_requests_waiting")) < 4:
            assert time.monotonic() < deadline, "the load never reached the engine"
        start = time.monotonic()
        with pytest.raises(openai.RateLimitError) as err:
            oai.completions.create(model=MODEL, prompt="the river", max_tokens=4,
                                   extra_body={"aruntime": {"slo": {"ttft_ms": 1}}})
        refused_in = time.monotonic() - start
        assert refused_in < 2.0 and any(t.is_alive() for t in load)  # long before they end
        e = err.value
        assert e.status_code == 429 and e.code == "slo_unattainable"
        assert e.type == "rate_limit_exceeded" and e.param == "aruntime.slo.ttft_ms"
        assert "predicted time to first token" in e.message and "target 1 ms" in e.message
        assert int(e.response.headers["retry-after"]) >= 1
        assert set(e.response.json()["error"]) == {"message", "type", "param", "code"}

        ok = oai.completions.create(model=MODEL, prompt="the river", max_tokens=4,
                                    extra_body={"ignore_eos": True,
                                                "aruntime": {"slo": {"ttft_ms": 120_000}}})
        assert ok.choices[0].finish_reason == "length"
        for t in load:
            t.join(timeout=120)
        assert results == [200] * 4
        rejected = _gauge(http, "aruntime:requests_rejected_total")
        assert rejected == 1
