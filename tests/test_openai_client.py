"""The official `openai` client against a running ARuntime server (real engine core process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from aruntime.engine.config import EngineConfig
from aruntime.serve.launch import background_server

MAX_MODEL_LEN = 256
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[openai.OpenAI]:
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=2 * 1024 * 1024,
                          max_model_len=MAX_MODEL_LEN)
    with background_server(config, tmp_path_factory.mktemp("data"),
                           served_model_name=MODEL) as srv, \
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0,
                          timeout=30) as c:
        yield c


def test_models(client: openai.OpenAI) -> None:
    (model,) = client.models.list().data
    assert model.id == MODEL and model.owned_by == "aruntime"
    extra: dict[str, Any] = model.model_extra or {}
    assert extra["aruntime"]["demo"] is True and "--model" in extra["aruntime"]["note"]
    assert client.models.retrieve(MODEL).id == MODEL


def test_completion(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="the river", max_tokens=5,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == MODEL
    assert r.choices[0].finish_reason == "length" and r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens_details is not None  # type: ignore[attr-defined]


def test_chat(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_tokens=4,
        seed=1, extra_body={"ignore_eos": True})
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 4


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)  # the client stops at [DONE]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert text and finals == ["length"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens == 5  # type: ignore[union-attr]


def test_completion_stream(client: openai.OpenAI) -> None:
    stream = client.completions.create(model=MODEL, prompt="a", max_tokens=4, stream=True,
                                       extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n_gives_distinct_indexes(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="x", max_tokens=3, n=3,
                                  extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                                  "content": "x"}],
                                          max_tokens=3, n=2, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in chat.choices) == [0, 1]
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                                    "content": "x"}],
                                            max_tokens=3, n=4, stream=True,
                                            extra_body={"ignore_eos": True})
    done = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert done == {0, 1, 2, 3}


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="the", max_tokens=3, logprobs=2,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and len(lp.tokens) == 3
    assert lp.token_logprobs is not None and all(v <= 0 for v in lp.token_logprobs)
    assert lp.top_logprobs is not None and all(len(t) == 2 for t in lp.top_logprobs)
    # Byte-level tokens may split a character, so the tokens need not spell the text exactly.
    assert lp.text_offset is not None and lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                                  "content": "the"}],
                                          max_tokens=3, logprobs=True, top_logprobs=2,
                                          extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 3
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


CHAT = [{"role": "user", "content": "hello"}]
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("completions", {"prompt": "x", "max_tokens": MAX_MODEL_LEN}, "max_tokens"),
    ("completions", {"prompt": "x", "temperature": 3}, "temperature"),
    ("completions", {"prompt": "x", "top_p": 0}, "top_p"),
    ("completions", {"prompt": "x", "n": 0}, "n"),
    ("completions", {"prompt": "x", "n": 17}, "n"),
    ("completions", {"prompt": ""}, "prompt"),
    ("completions", {"prompt": list(range(MAX_MODEL_LEN + 5))}, "prompt"),
    ("completions", {"prompt": "x", "stream_options": {"include_usage": True}},
     "stream_options"),
    ("completions", {"prompt": "x", "logprobs": 9}, "logprobs"),
    ("completions", {"prompt": "x", "extra_body": {"max_tokens": "many"}}, "max_tokens"),
    ("chat", {"messages": []}, "messages"),
    ("chat", {"messages": CHAT, "temperature": -1}, "temperature"),
    ("chat", {"messages": CHAT, "top_p": 1.01}, "top_p"),
    ("chat", {"messages": CHAT, "n": 20}, "n"),
    ("chat", {"messages": CHAT, "max_tokens": 0}, "max_tokens"),
    ("chat", {"messages": CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
]


@pytest.mark.parametrize(("api", "kwargs", "param"), BAD,
                         ids=[f"{a}-{p}-{i}" for i, (a, _, p) in enumerate(BAD)])
def test_bad_request(client: openai.OpenAI, api: str, kwargs: dict[str, Any],
                     param: str) -> None:
    create: Any = (client.completions.create if api == "completions"
                   else client.chat.completions.create)
    with pytest.raises(openai.BadRequestError) as info:
        create(model=MODEL, **kwargs)
    assert info.value.status_code == 400
    assert info.value.param == param  # type: ignore[attr-defined]
    assert info.value.type == "invalid_request_error"  # type: ignore[attr-defined]


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nope", prompt="x")
    assert info.value.code == "model_not_found"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT)  # type: ignore[arg-type]
