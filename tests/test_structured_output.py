"""`response_format` through the server (a real engine core process) with the official client:
JSON-schema and JSON-object answers, streaming, n > 1, and the 400s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from aruntime.engine.config import EngineConfig
from aruntime.serve.launch import background_server

MODEL = "tiny-llama"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no", "maybe"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 10},
        "why": {"type": "string", "maxLength": 8},
    },
    "required": ["answer", "confidence", "why"],
    "additionalProperties": False,
}
FORMAT: Any = {"type": "json_schema",
               "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}}
MESSAGES: Any = [{"role": "user", "content": "Is the sky blue? Answer in JSON."}]


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[openai.OpenAI]:
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=2 * 1024 * 1024,
                          max_model_len=256)
    with background_server(config, tmp_path_factory.mktemp("data"),
                           served_model_name=MODEL) as srv, \
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0,
                          timeout=60) as c:
        yield c


def test_json_schema_answers_validate_with_n_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=80, n=3,
                                       seed=5, response_format=FORMAT)
    assert len(r.choices) == 3
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)


def test_streamed_json_schema_answer_validates(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=80,
                                            seed=9, stream=True, response_format=FORMAT)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices
            and c.choices[0].finish_reason] == ["stop"]
    jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_and_text(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, seed=1,
                                       response_format={"type": "json_object"})
    content = r.choices[0].message.content or ""
    assert content.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6,
                                           seed=1, response_format={"type": "text"},
                                           extra_body={"ignore_eos": True})
    assert plain.choices[0].finish_reason == "length"


def test_completions_take_response_format(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="JSON:", max_tokens=80, seed=2,
                                  extra_body={"response_format": FORMAT})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].text), SCHEMA)


@pytest.mark.parametrize(("response_format", "param", "named"), [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "uniqueItems": True}}},
     "response_format.json_schema.schema", "unsupported keyword 'uniqueItems'"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}},
     "response_format.json_schema.schema", "unsupported keyword 'not'"),
    ({"type": "xml"}, "response_format", "'text', 'json_object' or 'json_schema'"),
    ({"type": "json_schema"}, "response_format.json_schema", "string 'name'"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}},
     "response_format.json_schema", "must be an object"),
    ("json", "response_format", "must be an object"),
])
def test_bad_or_unenforceable_response_format_is_400(client: openai.OpenAI, response_format: Any,
                                                      param: str, named: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,
                                       response_format=response_format)
    err = info.value
    assert err.status_code == 400 and named in err.message
    body: Any = err.body
    assert body["param"] == param and body["type"] == "invalid_request_error"
