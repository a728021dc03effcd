"""The tool-call formats: one-shot parses of model-like answers, the streamed reader against them
on every split and on random ones, the constraint each format builds, and the choice of format."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from aruntime.serve.tool_parsers import HermesParser, Llama3JsonParser, ToolParser, parser_for
from aruntime.serve.tool_specs import Tool, ToolPlan
from aruntime.serve.tool_stream import CallDelta, ParsedOutput

NAMES = ("get_weather", "search")
WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                            "unit": {"enum": ["c", "f"]}},
           "required": ["city"], "additionalProperties": False}
TOOLS = (Tool("get_weather", "Current weather", WEATHER),
         Tool("search", None, {"type": "object", "properties": {"q": {"type": "string"}}}))

# What Qwen2.5 / SmolLM2-style models write, including a call before and after prose, escaped
# braces and quotes inside strings, nested arguments and unicode.
HERMES_CASES: list[tuple[str, str | None, list[tuple[str, str]]]] = [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     None, [("get_weather", '{"city": "Paris"}')]),
    ('I will look that up.\n<tool_call>\n{"name": "search", "arguments": {"q": "a \\"}\\" {b"}}'
     '\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", '
     '"unit": "c"}}\n</tool_call>',
     "I will look that up.",
     [("search", '{"q": "a \\"}\\" {b"}'), ("get_weather", '{"city": "Zürich", "unit": "c"}')]),
    ('<tool_call>{"name":"search","arguments":{"q":{"nested":[1,{"x":"]"}]}}}</tool_call> done',
     "done", [("search", '{"q":{"nested":[1,{"x":"]"}]}}')]),
    # not calls: an unknown name, keys out of order, no JSON, a tag that never opens
    ('<tool_call>\n{"name": "delete_all", "arguments": {}}\n</tool_call>',
     '<tool_call>\n{"name": "delete_all", "arguments": {}}\n</tool_call>', []),
    ('<tool_call>{"arguments": {}, "name": "search"}</tool_call>',
     '<tool_call>{"arguments": {}, "name": "search"}</tool_call>', []),
    ("Use <tool_call> tags to call tools.", "Use <tool_call> tags to call tools.", []),
    ("The weather is nice <tool_ca", "The weather is nice <tool_ca", []),
    ("  plain answer  ", "plain answer", []),
    # cut by max_tokens inside the arguments: the call stands as far as it came
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
     None, [("get_weather", '{"city": "Par')]),
    # cut inside the header: not a call
    ('<tool_call>\n{"name": "get_wea', '<tool_call>\n{"name": "get_wea', []),
]

LLAMA_CASES: list[tuple[str, str | None, list[tuple[str, str]]]] = [
    ('<|python_tag|>{"name": "search", "parameters": {"q": "x"}}', None,
     [("search", '{"q": "x"}')]),
    ('{"name": "search", "parameters": {"q": "x"}}; {"name": "get_weather", "parameters": '
     '{"city": "Rome"}}', None, [("search", '{"q": "x"}'), ("get_weather", '{"city": "Rome"}')]),
    ('  {"name": "get_weather", "arguments": {"city": "Oslo"}} ', None,
     [("get_weather", '{"city": "Oslo"}')]),
    ('Sure! {"name": "search", "parameters": {}}', 'Sure! {"name": "search", "parameters": {}}',
     []),
    ('{"name": "nope", "parameters": {}}', '{"name": "nope", "parameters": {}}', []),
    ('{"name": "search", "parameters": {"q": "x"}} and more', "and more",
     [("search", '{"q": "x"}')]),
]


def _summary(out: ParsedOutput) -> tuple[str | None, list[tuple[str, str]]]:
    return out.content, [(c.name, c.arguments) for c in out.calls]


def _streamed(parser: ToolParser, pieces: list[str]) -> tuple[str | None,
                                                               list[tuple[str, str]]]:
    """What a client assembles from the deltas: content joined, each call from its first delta
    (id and name, arguments "") and then its argument pieces."""
    reader = parser.stream(NAMES)
    deltas = [d for p in pieces for d in reader.push(p)] + reader.finish()
    content = "".join(d for d in deltas if isinstance(d, str)) or None
    calls: dict[int, list[str]] = {}
    ids: dict[int, str] = {}
    for d in (d for d in deltas if isinstance(d, CallDelta)):
        if d.id is not None:
            assert d.index not in calls and d.arguments == "" and d.name
            calls[d.index], ids[d.index] = [d.name, ""], d.id
        else:
            calls[d.index][1] += d.arguments
    assert sorted(calls) == list(range(len(calls)))
    assert all(i.startswith("call_") for i in ids.values()) and len(set(ids.values())) == len(ids)
    return content, [(n, a) for n, a in (calls[i] for i in sorted(calls))]


@pytest.mark.parametrize(("parser", "case"),
                         [(HermesParser(), c) for c in HERMES_CASES]
                         + [(Llama3JsonParser(), c) for c in LLAMA_CASES])
def test_one_shot_and_every_split(parser: ToolParser,
                                  case: tuple[str, str | None, list[tuple[str, str]]]) -> None:
    text, content, calls = case
    assert _summary(parser.parse(text, NAMES)) == (content, calls)
    for arguments in (a for _, a in calls):
        if arguments.endswith("}"):
            assert isinstance(json.loads(arguments), dict)
    for cut in range(len(text) + 1):
        assert _streamed(parser, [text[:cut], text[cut:]]) == (content, calls), cut
    assert _streamed(parser, list(text)) == (content, calls)


def test_random_splits() -> None:
    rng = random.Random(13)
    for parser, cases in ((HermesParser(), HERMES_CASES), (Llama3JsonParser(), LLAMA_CASES)):
        for text, content, calls in cases:
            for _ in range(50):
                cuts = sorted(rng.sample(range(len(text) + 1), rng.randint(1, 6)))
                pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
                assert _streamed(parser, pieces) == (content, calls)


def test_content_is_released_as_soon_as_it_cannot_be_a_call() -> None:
    reader = HermesParser().stream(NAMES)
    assert reader.push("Hello there <tool") == ["Hello there"]  # " <tool" may still open one
    assert reader.push("box>") == [" <toolbox>"]
    first = reader.push('<tool_call>\n{"name": "search", "arguments": {"q"')
    assert isinstance(first[0], CallDelta) and first[0].name == "search"
    assert [d.arguments for d in first[1:] if isinstance(d, CallDelta)] == ['{"q"']


@pytest.mark.parametrize(("choice", "named", "parallel", "repeat", "allowed"), [
    ("required", None, True, True, ["get_weather", "search"]),
    ("required", None, None, False, ["get_weather", "search"]),  # not said: one call
    ("required", None, False, False, ["get_weather", "search"]),
    ("function", "get_weather", True, False, ["get_weather"]),
])
def test_hermes_constraint(choice: str, named: str | None, parallel: bool | None, repeat: bool,
                           allowed: list[str]) -> None:
    guided = HermesParser().guided(ToolPlan(TOOLS, choice, named, parallel))
    assert guided.kind == "tool_calls" and guided.repeat is repeat
    assert (guided.begin, guided.end) == ("<tool_call>\n", "\n</tool_call>")
    schema = json.loads(guided.schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    good = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}
    jsonschema.validate(good, schema)
    for bad in ({"name": "get_weather", "arguments": {"unit": "c"}},  # city is required
                {"name": "get_weather", "arguments": {"city": "P"}, "extra": 1},
                {"name": "other", "arguments": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    valid_search = jsonschema.Draft202012Validator(schema).is_valid(
        {"name": "search", "arguments": {"q": "x"}})
    assert valid_search is ("search" in allowed)
    # A call the constraint admits is one the parser reads back, arguments verbatim.
    text = guided.begin + json.dumps(good) + guided.end
    assert _summary(HermesParser().parse(text, NAMES)) == (
        None, [("get_weather", json.dumps(good["arguments"]))])


def test_llama3_constraint_uses_parameters_and_one_call() -> None:
    guided = Llama3JsonParser().guided(ToolPlan(TOOLS, "required", None, True))
    schema = json.loads(guided.schema)
    jsonschema.validate({"name": "search", "parameters": {"q": "x"}}, schema)
    assert guided.repeat is False and (guided.begin, guided.end) == ("", "")


def test_format_from_template_or_flag() -> None:
    qwen = '{%- if tools %}<tools>{{ tool | tojson }}</tools> <tool_call>...{%- endif %}'
    llama = '{%- if tools %}{{- "<|python_tag|>" }}{"name": ..., "parameters": ...}{%- endif %}'
    assert parser_for(qwen).name == "hermes"
    assert parser_for(llama).name == "llama3_json"
    assert parser_for("{{ messages }}").name == "hermes" and parser_for(None).name == "hermes"
    assert parser_for(qwen, "llama3_json").name == "llama3_json"
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        parser_for(qwen, "mistral")
