"""Issue 13's acceptance on the real default model (SmolLM2-135M-Instruct from its GGUF), with the
official `openai` client against a real server: sampled tool calls that always validate, the
streamed call equal to the whole one, a tool round trip, sampled JSON-schema output that always
validates, and a 400 for a schema feature the grammar engine cannot enforce."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest

from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import resolve_model
from aruntime.serve.launch import background_server

MODEL = "SmolLM2-135M-Instruct"
SAMPLES = 50
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
CITY = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
        "properties": {"city": {"type": "string", "maxLength": 40},
                       "country": {"type": "string", "maxLength": 40}}}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    config = EngineConfig(model=str(resolve_model(None)), max_model_len=1024,
                          kv_cache_bytes=64 * 1024 * 1024, max_num_seqs=SAMPLES)
    with background_server(config, tmp_path_factory.mktemp("data")) as srv, \
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0,
                          timeout=600) as c:
        yield c


def _sampled(call: Any) -> list[Any]:
    """SAMPLES requests at once, so they share the engine's batches as real traffic does."""
    with ThreadPoolExecutor(SAMPLES) as pool:
        return list(pool.map(call, range(SAMPLES)))


def test_required_tool_calls_always_validate(client: openai.OpenAI) -> None:
    def call(seed: int) -> Any:
        return client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
            temperature=1.0, seed=seed, max_tokens=160)

    schema = WEATHER["function"]["parameters"]
    for r in _sampled(call):
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (tc,) = choice.message.tool_calls
        assert tc.function.name == "get_weather" and tc.id
        jsonschema.validate(json.loads(tc.function.arguments), schema)


def test_the_streamed_call_assembles_to_the_whole_call(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": [WEATHER],
                          "tool_choice": "required", "temperature": 0.0, "max_tokens": 160}
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    name, args, ids, reasons = "", "", set(), []
    for chunk in client.chat.completions.create(stream=True, **kw):
        if not chunk.choices:
            continue
        reasons.append(chunk.choices[0].finish_reason)
        for d in chunk.choices[0].delta.tool_calls or []:
            assert d.index == 0
            ids |= {d.id} if d.id else set()
            name += (d.function.name or "") if d.function else ""
            args += (d.function.arguments or "") if d.function else ""
    assert (name, json.loads(args)) == (whole.function.name, json.loads(whole.function.arguments))
    assert args == whole.function.arguments and len(ids) == 1
    assert [r for r in reasons if r] == ["tool_calls"]


def test_a_tool_message_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0.0,
        max_tokens=160).choices[0].message
    (tc,) = first.tool_calls
    history: list[Any] = [*ASK, {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": tc.id, "type": "function",
             "function": {"name": tc.function.name, "arguments": tc.function.arguments}}]},
        {"role": "tool", "tool_call_id": tc.id, "content": "18 C, sunny"}]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER],
                                            temperature=0.0, max_tokens=48)
    choice = answer.choices[0]
    assert choice.message.content and not choice.message.tool_calls
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.prompt_tokens > 100  # tools + history


def test_json_schema_output_always_validates(client: openai.OpenAI) -> None:
    fmt: Any = {"type": "json_schema",
                "json_schema": {"name": "city", "schema": CITY, "strict": True}}

    def call(seed: int) -> Any:
        return client.chat.completions.create(
            model=MODEL, temperature=1.0, seed=seed, max_tokens=96, response_format=fmt,
            messages=[{"role": "user", "content": "Name a large city and its country."}])

    for r in _sampled(call):
        assert r.choices[0].finish_reason == "stop", r.choices[0]
        jsonschema.validate(json.loads(r.choices[0].message.content), CITY)


def test_a_schema_feature_the_grammar_cannot_enforce_is_a_400(client: openai.OpenAI) -> None:
    schema = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=8, response_format={
                "type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert "uniqueItems" in str(info.value) and info.value.status_code == 400
