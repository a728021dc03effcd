"""Tool calling through the HTTP server with the official `openai` client: request shapes (bad
ones are 400s naming their param), the conversation rendered with tools through the chat template
(ours in Hermes' format when the template cannot show tools, the template's own when it can), and
answers read for calls."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from aruntime.engine.config import EngineConfig
from aruntime.engine.tokenizer import Tokenizer
from aruntime.serve.launch import BackgroundServer, add_arguments, background_server
from aruntime.serve.tool_parsers import HermesParser, Llama3JsonParser
from aruntime.serve.tool_prompts import render_chat, template_handles_tools
from aruntime.serve.tool_specs import tool_plan

MODEL = "tiny"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}}}}
ROUND_TRIP: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather and time in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[BackgroundServer]:
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=8 * 1024 * 1024,
                          max_model_len=2048)
    with background_server(config, tmp_path_factory.mktemp("data"),
                           served_model_name=MODEL) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                       timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_model_dir)


def test_round_trip_renders_in_hermes_format(tokenizer: Tokenizer,
                                             client: openai.OpenAI) -> None:
    assert not template_handles_tools(tokenizer.chat_template)  # the demo's: role + content
    tools = tool_plan(_specs([WEATHER, TIME]), "auto", True)
    messages = [_message_dict(m) for m in ROUND_TRIP]
    text = render_chat(tokenizer, messages, tools, HermesParser())
    system, user, assistant, answers, prompt = text.split("<|im_end|>\n")
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(WEATHER) + "\n" + json.dumps(TIME) + "\n</tools>" in system
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}' in system
    assert user == "<|im_start|>user\nWeather and time in Paris?"
    assert assistant == (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
        '{"zone": "CET"}}\n</tool_call>')
    assert answers == ('<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n'
                       "<tool_response>\n14:05\n</tool_response>")
    assert prompt == "<|im_start|>assistant\n"
    # The server renders exactly this prompt: its token count is the rendered text's.
    r = client.chat.completions.create(model=MODEL, messages=ROUND_TRIP, tools=[WEATHER, TIME],
                                       max_tokens=3, temperature=0)
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(tokenizer.encode(text, add_special_tokens=False))


def test_tool_choice_none_offers_no_tools(tokenizer: Tokenizer, client: openai.OpenAI) -> None:
    messages = [_message_dict(m) for m in ROUND_TRIP]
    text = render_chat(tokenizer, messages, tool_plan(_specs([WEATHER]), "none", True),
                       HermesParser())
    assert "<tools>" not in text and "<tool_response>" in text  # the history still renders
    r = client.chat.completions.create(model=MODEL, messages=ROUND_TRIP, tools=[WEATHER],
                                       tool_choice="none", max_tokens=3, temperature=0)
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(tokenizer.encode(text, add_special_tokens=False))
    assert r.choices[0].message.tool_calls is None


# A template that handles tools itself, in the spirit of Qwen2.5's (written for this test).
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:"
    "{% for t in tools %}{{ '\\n' }}{{ t | tojson }}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<call {{ c.function.name }} "
    "{{ c.function.arguments.city }} {{ c.function.arguments | tojson }}>{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_template_with_tools_gets_them_and_dict_arguments(tokenizer: Tokenizer) -> None:
    own = Tokenizer(tokenizer.backend, chat_template=TOOL_TEMPLATE)
    assert template_handles_tools(own.chat_template)
    messages = [_message_dict(m) for m in ROUND_TRIP[1:3]]
    text = render_chat(own, messages, tool_plan(_specs([WEATHER]), "auto", True), HermesParser())
    assert text == (
        f"<|im_start|>system\nTOOLS:\n{json.dumps(WEATHER)}<|im_end|>\n"
        "<|im_start|>user\nWeather and time in Paris?<|im_end|>\n<|im_start|>assistant\n"
        '<call get_weather Paris {"city": "Paris"}><call get_time  {"zone": "CET"}><|im_end|>\n'
        "<|im_start|>assistant\n")
    none = render_chat(own, messages, tool_plan(_specs([WEATHER]), "none", True), HermesParser())
    assert "TOOLS" not in none


@pytest.mark.parametrize("stream", [False, True])
def test_auto_on_the_tiny_model_reads_the_answer(client: openai.OpenAI, stream: bool) -> None:
    """Random weights write no call: the answer is content, streamed as it is whole."""
    kwargs: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                              "tools": [WEATHER], "max_tokens": 12, "temperature": 0}
    whole = client.chat.completions.create(**kwargs)
    choice = whole.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == choice.message.content
        assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == choice.finish_reason


# Arguments the constraint spells out almost whole, so the random tiny model closes its call.
PICK = {"type": "function", "function": {"name": "pick", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]},
                                     "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def _valid_call(call: Any, tool: dict[str, Any]) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


ZONE = {"type": "function", "function": {"name": "zone", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["CET", "UTC"]}}, "required": ["zone"]}}}


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "pick"}}])
def test_constrained_calls_always_parse_and_validate(client: openai.OpenAI,
                                                     choice: Any) -> None:
    """Sampled (temperature 1) from random weights, yet every answer is one valid call."""
    names = set()
    for seed in range(6):
        r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[ZONE, PICK],
                                           tool_choice=choice, max_tokens=120, temperature=1,
                                           seed=seed)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None
        (call,) = c.message.tool_calls or []
        _valid_call(call, PICK if call.function.name == "pick" else ZONE)
        names.add(call.function.name)
    assert names <= ({"pick", "zone"} if choice == "required" else {"pick"})


def test_streamed_call_assembles_to_the_whole_one(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": [WEATHER, PICK],
                              "tool_choice": {"type": "function", "function": {"name": "pick"}},
                              "max_tokens": 120, "temperature": 0}
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = [c for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    pieces = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    first, rest = pieces[0], pieces[1:]
    assert first.index == 0 and first.type == "function" and first.id
    assert first.function is not None and first.function.arguments == ""
    assert rest and all(p.id is None and p.function is not None and p.function.name is None
                        for p in rest)
    (call,) = whole.message.tool_calls or []
    assert first.function.name == call.function.name
    assert "".join(p.function.arguments or "" for p in rest) == call.function.arguments
    assert not any(c.choices[0].delta.content for c in chunks)
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "tool_calls"


def test_a_call_and_its_answer_round_trip(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    """The call the server returned, sent back with its tool answer, renders as Hermes text."""
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[PICK],
                                       tool_choice="required", max_tokens=120, temperature=0)
    (call,) = r.choices[0].message.tool_calls or []
    history: list[Any] = [*ASK, r.choices[0].message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "21 C"}]
    again = client.chat.completions.create(model=MODEL, messages=history, tools=[PICK],
                                           max_tokens=3, temperature=0)
    text = render_chat(tokenizer, [_message_dict(m) for m in history],
                       tool_plan(_specs([PICK]), "auto", None), HermesParser())
    arguments = json.loads(call.function.arguments)
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "pick", "arguments": '
            f"{json.dumps(arguments)}}}\n</tool_call><|im_end|>\n") in text
    assert "<|im_start|>user\n<tool_response>\n21 C\n</tool_response><|im_end|>\n" in text
    assert again.usage is not None
    assert again.usage.prompt_tokens == len(tokenizer.encode(text, add_special_tokens=False))


BAD: list[tuple[dict[str, Any], str]] = [
    ({"tools": []}, "tools"),
    ({"tools": [{"type": "retrieval", "function": WEATHER["function"]}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]},
     "tools[0].function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "string"}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": 5}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}}}],
      "tool_choice": "required"}, "tools"),  # a keyword the grammar cannot enforce
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}]},
     "messages[1].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": ROUND_TRIP[2]["tool_calls"]}]},
     "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
     "messages[0].tool_calls[0].function"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[p for _, p in BAD])
def test_bad_shapes_are_400s(client: openai.OpenAI, body: dict[str, Any], param: str) -> None:
    kwargs: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, max_tokens=2, **kwargs)
    assert info.value.param == param  # type: ignore[attr-defined]
    assert info.value.status_code == 400


def _specs(tools: list[dict[str, Any]]) -> Any:
    from aruntime.serve.tool_specs import ToolSpec

    return [ToolSpec.model_validate(t) for t in tools]


def _message_dict(m: dict[str, Any]) -> dict[str, Any]:
    """What the server hands the renderer (serve/protocol.py's chat_messages)."""
    from aruntime.serve.protocol import ChatMessageIn, chat_messages

    return chat_messages([ChatMessageIn.model_validate(m)])[0]


def test_llama3_json_format_by_flag(tiny_model_dir: Path, tmp_path: Path,
                                    tokenizer: Tokenizer) -> None:
    """`--tool-call-parser llama3_json` reaches the server: its prompt and its constraint."""
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=8 * 1024 * 1024,
                          max_model_len=2048)
    with background_server(config, tmp_path, served_model_name=MODEL,
                           tool_call_parser="llama3_json") as srv, \
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0,
                          timeout=60) as client:
        r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[PICK],
                                           tool_choice="required", max_tokens=120,
                                           temperature=0)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls"
        (call,) = c.message.tool_calls or []
        _valid_call(call, PICK)
        text = render_chat(tokenizer, ASK, tool_plan(_specs([PICK]), "auto", None),
                           Llama3JsonParser())
        assert '{"name": function name, "parameters": dictionary' in text
        assert r.usage is not None
        assert r.usage.prompt_tokens == len(tokenizer.encode(text, add_special_tokens=False))


def test_the_flag_takes_known_formats_only() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    assert parser.parse_args(["--tool-call-parser", "hermes"]).tool_call_parser == "hermes"
    assert parser.parse_args([]).tool_call_parser is None
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        parser.parse_args(["--tool-call-parser", "mistral"])
