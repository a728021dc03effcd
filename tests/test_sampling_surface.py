"""The sampling fields clients send, through a real server (engine core in its own process):
each has an effect a test would catch if it were ignored, and each bad value is a 400 naming it."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aruntime.contracts import RequestContract
from aruntime.engine.config import EngineConfig
from aruntime.engine.tokenizer import Tokenizer
from aruntime.serve.launch import BackgroundServer, background_server

MAX_MODEL_LEN = 256
EOS = 2  # the demo checkpoint's
A = 1234  # a token greedy decoding never picks on these prompts unless biased


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[BackgroundServer]:
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=4 * 1024 * 1024,
                          max_model_len=MAX_MODEL_LEN, max_num_seqs=16)
    with background_server(config, tmp_path_factory.mktemp("data"),
                           served_model_name="tiny") as srv:
        yield srv


@pytest.fixture()
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_model_dir)


def ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 1000) for _ in range(n)]


def complete(http: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("temperature", 0)
    r = http.post("/v1/completions", json={"model": "tiny", **body})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def chat(http: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("temperature", 0)
    r = http.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "tell me"}], **body})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


# ---- each field has its effect ---------------------------------------------------------------


def test_logit_bias_forces_and_bans(http: httpx.Client, tok: Tokenizer) -> None:
    prompt = ids(9, 1)
    forced = complete(http, prompt=prompt, max_tokens=4, ignore_eos=True,
                      logit_bias={str(A): 100})
    assert forced["choices"][0]["text"] == tok.decode([A] * 4)
    first = complete(http, prompt=prompt, max_tokens=1, ignore_eos=True)["choices"][0]["text"]
    same_text = {str(i): -100 for i in range(tok.vocab_size) if tok.decode([i]) == first}
    banned = complete(http, prompt=prompt, max_tokens=1, ignore_eos=True, logit_bias=same_text)
    assert banned["choices"][0]["text"] != first
    message = chat(http, max_tokens=3, ignore_eos=True, logit_bias={str(A): 100})
    assert message["choices"][0]["message"]["content"] == tok.decode([A] * 3)


@pytest.mark.parametrize("field", ["frequency_penalty", "presence_penalty",
                                   "repetition_penalty"])
def test_penalties_break_a_repeating_output(http: httpx.Client, field: str) -> None:
    prompts = [ids(8, 100 + i) for i in range(16)]

    def distinct(**kw: Any) -> list[int]:
        body = complete(http, prompt=prompts, max_tokens=40, ignore_eos=True, logprobs=0, **kw)
        return [len(set(c["logprobs"]["tokens"])) for c in body["choices"]]

    plain = distinct()
    worst = plain.index(min(plain))
    assert plain[worst] <= 36, "no seeded prompt repeats; pick other seeds"
    assert distinct(**{field: 2.0})[worst] > plain[worst]


def test_min_tokens_holds_back_eos_and_stop_ids(http: httpx.Client) -> None:
    prompt = ids(9, 2)
    eager = complete(http, prompt=prompt, max_tokens=10, logit_bias={str(EOS): 100})
    assert eager["usage"]["completion_tokens"] == 1
    held = complete(http, prompt=prompt, max_tokens=10, min_tokens=3, logit_bias={str(EOS): 100})
    assert held["usage"]["completion_tokens"] == 4
    assert held["choices"][0]["finish_reason"] == "stop"
    stop = chat(http, max_tokens=10, min_tokens=5, ignore_eos=True, stop_token_ids=[A],
                logit_bias={str(A): 100})
    assert stop["usage"]["completion_tokens"] == 6 and stop["choices"][0]["finish_reason"] == "stop"


def test_stop_strings_and_ids(http: httpx.Client) -> None:
    prompt = ids(10, 3)
    text = complete(http, prompt=prompt, max_tokens=24, ignore_eos=True)["choices"][0]["text"]
    stop = text[3:6]
    for stops in (stop, [stop, "\x00never"]):
        cut = complete(http, prompt=prompt, max_tokens=24, ignore_eos=True, stop=stops)
        assert cut["choices"][0]["text"] == text[:text.index(stop)]
        assert cut["choices"][0]["finish_reason"] == "stop"
    late = complete(http, prompt=prompt, max_tokens=24, ignore_eos=True, stop=stop,
                    min_tokens=20)["choices"][0]
    assert late["text"].startswith(text[:text.index(stop) + len(stop)])
    by_id = complete(http, prompt=prompt, max_tokens=10, ignore_eos=True, stop_token_ids=[A],
                     logit_bias={str(A): 100})
    assert by_id["usage"]["completion_tokens"] == 1
    assert by_id["choices"][0]["finish_reason"] == "stop"


def test_seed_repeats_with_n(http: httpx.Client) -> None:
    body = {"max_tokens": 8, "temperature": 1.0, "seed": 7, "n": 3, "ignore_eos": True}
    a = [c["message"]["content"] for c in chat(http, **body)["choices"]]
    b = [c["message"]["content"] for c in chat(http, **body)["choices"]]
    assert a == b and len(set(a)) == 3  # each choice its own stream, repeatably
    other = [c["message"]["content"] for c in chat(http, **{**body, "seed": 8})["choices"]]
    assert other != a


def test_top_logprobs_and_max_completion_tokens(http: httpx.Client) -> None:
    body = chat(http, max_tokens=10, max_completion_tokens=3, ignore_eos=True, logprobs=True,
                top_logprobs=5)
    assert body["usage"]["completion_tokens"] == 3
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(t["top_logprobs"]) == 5 for t in content)


# ---- echo ----------------------------------------------------------------------------------


def test_echo_leads_with_the_prompt(http: httpx.Client, tok: Tokenizer) -> None:
    plain = complete(http, prompt="once upon", max_tokens=5, ignore_eos=True)
    echoed = complete(http, prompt="once upon", max_tokens=5, ignore_eos=True, echo=True)
    assert echoed["choices"][0]["text"] == "once upon" + plain["choices"][0]["text"]
    assert echoed["usage"] == plain["usage"]
    prompt = ids(6, 4)
    batch = complete(http, prompt=[prompt, "the river"], n=2, max_tokens=2, ignore_eos=True,
                     echo=True)
    heads = [tok.decode(prompt, skip_special_tokens=False)] * 2 + ["the river"] * 2
    assert [c["text"][:len(h)] for c, h in zip(batch["choices"], heads, strict=True)] == heads


def test_echo_streams_the_prompt_first(http: httpx.Client) -> None:
    plain = complete(http, prompt="the sea", max_tokens=4, ignore_eos=True)
    with http.stream("POST", "/v1/completions", json={
            "model": "tiny", "prompt": "the sea", "max_tokens": 4, "temperature": 0,
            "ignore_eos": True, "echo": True, "stream": True}) as r:
        events = [e[6:] for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert texts[0] == "the sea" and "".join(texts) == "the sea" + plain["choices"][0]["text"]


def test_echo_with_logprobs_covers_the_prompt(http: httpx.Client) -> None:
    context = ids(7, 5)
    # The bias picks A; the logprob reported for it is the model's own in this context...
    forced = complete(http, prompt=context, max_tokens=1, ignore_eos=True, logprobs=1,
                      logit_bias={str(A): 100})["choices"][0]["logprobs"]
    # ...and so is A's logprob as the last token of an echoed prompt.
    body = complete(http, prompt=[*context, A], max_tokens=2, ignore_eos=True, logprobs=2,
                    echo=True)
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(context) + 1 + 2 == len(lp["text_offset"])
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v <= 0 for v in lp["token_logprobs"][1:])
    assert all(1 <= len(t) <= 2 for t in lp["top_logprobs"][1:])
    assert lp["token_logprobs"][len(context)] == pytest.approx(forced["token_logprobs"][0],
                                                               abs=1e-4)
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    with http.stream("POST", "/v1/completions", json={
            "model": "tiny", "prompt": [*context, A], "max_tokens": 2, "temperature": 0,
            "ignore_eos": True, "logprobs": 2, "echo": True, "stream": True}) as r:
        events = [json.loads(e[6:]) for e in r.read().decode().split("\n\n")
                  if e and e != "data: [DONE]"]
    first = events[0]["choices"][0]["logprobs"]
    assert first["tokens"] == lp["tokens"][:len(context) + 1]
    assert first["token_logprobs"][1:] == pytest.approx(lp["token_logprobs"][1:len(context) + 1],
                                                        abs=1e-5)


def test_the_official_client_sends_the_fields(server: BackgroundServer, tok: Tokenizer) -> None:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                       timeout=60) as client:
        r = client.completions.create(model="tiny", prompt="hello", max_tokens=3, temperature=0,
                                      logit_bias={str(A): 100}, presence_penalty=0.5,
                                      frequency_penalty=0.5, seed=3, echo=True, stop=["\x00"],
                                      extra_body={"min_tokens": 2, "repetition_penalty": 1.1})
        assert r.choices[0].text == "hello" + tok.decode([A] * 3)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="tiny", messages=[{"role": "user",
                                                                    "content": "x"}],
                                           logit_bias={"x": 1})
        assert info.value.param == "logit_bias"  # type: ignore[attr-defined]


# ---- bad values ----------------------------------------------------------------------------

CMPL = {"model": "tiny", "prompt": "hello"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
BAD = [
    (CMPL, {"presence_penalty": 2.5}, "presence_penalty"),
    (CHAT, {"presence_penalty": -2.01}, "presence_penalty"),
    (CMPL, {"presence_penalty": "high"}, "presence_penalty"),
    (CMPL, {"frequency_penalty": -3}, "frequency_penalty"),
    (CHAT, {"frequency_penalty": 2.1}, "frequency_penalty"),
    (CMPL, {"repetition_penalty": 0}, "repetition_penalty"),
    (CHAT, {"repetition_penalty": 2.5}, "repetition_penalty"),
    (CMPL, {"logit_bias": [1, 2]}, "logit_bias"),
    (CMPL, {"logit_bias": {"abc": 1}}, "logit_bias"),
    (CHAT, {"logit_bias": {"-1": 1}}, "logit_bias"),
    (CMPL, {"logit_bias": {"999999": 1}}, "logit_bias"),
    (CHAT, {"logit_bias": {"5": 101}}, "logit_bias"),
    (CMPL, {"logit_bias": {"5": "up"}}, "logit_bias"),
    (CMPL, {"logit_bias": {"5": True}}, "logit_bias"),
    (CMPL, {"min_tokens": -1}, "min_tokens"),
    (CMPL, {"max_tokens": 4, "min_tokens": 5}, "min_tokens"),
    (CHAT, {"max_completion_tokens": 4, "min_tokens": 5}, "min_tokens"),
    (CMPL, {"seed": 2 ** 64}, "seed"),
    (CHAT, {"seed": "lucky"}, "seed"),
    (CMPL, {"stop": 5}, "stop"),
    (CHAT, {"stop": ["ok", ""]}, "stop"),
    (CHAT, {"stop_token_ids": [-1]}, "stop_token_ids"),
    (CHAT, {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    (CHAT, {"max_completion_tokens": MAX_MODEL_LEN}, "max_completion_tokens"),
    (CMPL, {"echo": "yes"}, "echo"),
]


@pytest.mark.parametrize(("base", "fields", "param"), BAD,
                         ids=[f"{p}-{i}" for i, (_, _, p) in enumerate(BAD)])
def test_bad_values_are_400s_naming_the_param(http: httpx.Client, base: dict[str, Any],
                                              fields: dict[str, Any], param: str) -> None:
    path = "/v1/chat/completions" if "messages" in base else "/v1/completions"
    r = http.post(path, json={**base, **fields})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"]


# ---- the request contract ------------------------------------------------------------------

CONTRACT = {"id": "r1", "kind": "completion", "model": "m", "inputs": {"prompt": "x"}}


def test_the_contract_records_the_fields_and_reads_old_records() -> None:
    old = RequestContract.model_validate({**CONTRACT, "sampling": {"temperature": 0.5}})
    assert old.sampling.presence_penalty == 0.0 and old.sampling.logit_bias == {}
    assert old.sampling.repetition_penalty == 1.0 and old.sampling.min_tokens == 0
    new = RequestContract.model_validate({**CONTRACT, "sampling": {
        "presence_penalty": 1.0, "frequency_penalty": -1.0, "repetition_penalty": 1.2,
        "logit_bias": {"12": -100}, "min_tokens": 4, "max_tokens": 8}})
    assert new.sampling.logit_bias == {"12": -100.0} and new.sampling.min_tokens == 4
    for bad in ({"logit_bias": {"x": 1}}, {"logit_bias": {"1": 101}},
                {"min_tokens": 9, "max_tokens": 8}, {"repetition_penalty": 0}):
        with pytest.raises(ValueError, match="sampling"):
            RequestContract.model_validate({**CONTRACT, "sampling": bad})
