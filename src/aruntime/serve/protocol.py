"""OpenAI's wire shapes. Request bodies are parsed strictly (wrong types are 400s, unknown fields
are ignored as OpenAI does), then mapped onto engine prompts, SamplingParams and the request
contract; SSE events of responses are spelled here too (the logprobs objects: serve/logprobs.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aruntime.contracts import RequestContract
from aruntime.engine.guided_grammar import GuidedDecodingError, check_guided
from aruntime.engine.sampling import GuidedDecoding, SamplingParams
from aruntime.serve import json_body, openapi
from aruntime.serve.errors import InvalidRequestError
from aruntime.serve.tool_specs import ToolCallIn, ToolSpec, history_calls

MAX_N = 16
INT64 = (-(2 ** 63), 2 ** 63 - 1)  # seeds: what a torch generator and msgpack both take
# The request contract's fields that a body may set through its `aruntime` object.
ARUNTIME_FIELDS = frozenset({
    "tenant", "principal", "slo", "deadline", "confidentiality", "idempotency_key",
    "governance_tags", "trace_context", "shared_prefix_tokens", "prompt", "retrieval",
    "session",
})


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class _GenerationRequest(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)  # extension
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Any = Field(None, json_schema_extra=openapi.STOP)  # checked by `stop_strings`
    stop_token_ids: list[int] | None = None  # extension
    seed: int | None = Field(None, ge=INT64[0], le=INT64[1])
    user: str | None = None
    ignore_eos: bool = False  # extension
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)  # extension
    logit_bias: Any = None  # {"token id": bias}; checked by `logit_biases` for a clearer message
    min_tokens: int | None = Field(None, ge=0)  # extension
    aruntime: dict[str, Any] | None = Field(None, json_schema_extra=openapi.fields(ARUNTIME_FIELDS))
    response_format: Any = None  # checked by `response_format_guided` for a clearer message


class CompletionRequest(_GenerationRequest):
    model_config = ConfigDict(json_schema_extra={"required": ["model", "prompt"]})

    prompt: Any = Field(None, json_schema_extra=openapi.PROMPT)  # see `completion_prompts`
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = Field(None, json_schema_extra=openapi.CONTENT)  # see `chat_messages`
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant messages; content may then be null


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessageIn] = Field(json_schema_extra={"minItems": 1})
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[ToolSpec] | None = None
    tool_choice: Any = None  # str | {"type": "function", ...}; checked by tool_specs.tool_plan
    parallel_tool_calls: bool | None = None  # None: not said (OpenAI's default, true)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a body, strictly (serve/json_body.py)."""
    data = json_body.loads(raw)
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    return data


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(err["loc"])
        got = ""
        if err["type"] != "missing" and "input" in err:
            got = f" (got {json.dumps(err['input'], default=str)[:80]})"
        raise InvalidRequestError(f"Invalid value for '{param}': {err['msg']}{got}",
                                  param=param) from None


def _param(loc: Sequence[int | str]) -> str:
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else item)
    return out


def check_request(req: _GenerationRequest) -> None:
    """Rules a field type cannot say."""
    if req.stream_options is not None and not req.stream:
        raise InvalidRequestError("stream_options is only allowed when stream is true",
                                  param="stream_options")
    if isinstance(req, ChatCompletionRequest) and req.top_logprobs and not req.logprobs:
        raise InvalidRequestError("top_logprobs requires logprobs to be true",
                                  param="top_logprobs")


def stop_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise InvalidRequestError("stop must be a non-empty string or a list of them",
                                  param="stop")
    return tuple(stops)


def logit_biases(value: Any, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's `{"token id": bias}`, as (id, bias) pairs in id order."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidRequestError('logit_bias must be an object like {"50256": -100}',
                                  param="logit_bias")
    out = []
    for key, bias in value.items():
        token = int(key) if key.isascii() and key.isdigit() else -1
        if not 0 <= token < vocab_size:
            raise InvalidRequestError(f"logit_bias keys must be token ids in [0, {vocab_size}); "
                                      f"got {key[:40]!r}", param="logit_bias")
        if (isinstance(bias, bool) or not isinstance(bias, int | float)
                or not -100 <= bias <= 100):
            raise InvalidRequestError(f"logit_bias values must be numbers in [-100, 100]; got "
                                      f"{json.dumps(bias, default=str)[:40]} for {key}",
                                      param="logit_bias")
        out.append((token, float(bias)))
    return tuple(sorted(out))


def completion_prompts(prompt: Any, tokenizer: Any) -> list[list[int]]:
    """One token-id list per prompt of the batch."""
    if isinstance(prompt, str):
        batch: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_token(t) for t in prompt):
        batch = [prompt]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, str) or (isinstance(p, list) and all(_is_token(t) for t in p))
            for p in prompt):
        batch = prompt
    elif prompt is None:
        raise InvalidRequestError("prompt is required", param="prompt")
    else:
        raise InvalidRequestError("prompt must be a string, a list of strings, a list of token "
                                  "ids or a list of token-id lists, and not empty", param="prompt")
    out = []
    for p in batch:
        ids = tokenizer.encode(p) if isinstance(p, str) else list(p)
        if not ids:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        bad = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"prompt token ids must be in [0, {tokenizer.vocab_size}); got {bad[:5]}",
                param="prompt")
        out.append(ids)
    return out


def echo_texts(prompt: Any, prompts: list[list[int]], tokenizer: Any) -> list[str]:
    """What `echo` sends before each prompt's outputs: a text prompt as given, a token-id
    prompt decoded (special tokens spelled). `prompts` is `completion_prompts`' answer."""
    raw = [prompt] if isinstance(prompt, str) or all(_is_token(t) for t in prompt) else prompt
    return [r if isinstance(r, str) else tokenizer.decode(ids, skip_special_tokens=False)
            for r, ids in zip(raw, prompts, strict=True)]


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def chat_messages(messages: list[ChatMessageIn]) -> list[dict[str, Any]]:
    """Plain dicts for the chat template; text content parts are joined."""
    if not messages:
        raise InvalidRequestError("messages must not be empty", param="messages")
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise InvalidRequestError("only text content parts are supported",
                                          param=f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        elif content is None and m.role != "assistant":
            raise InvalidRequestError(f"a {m.role} message needs content",
                                      param=f"messages[{i}].content")
        elif content is not None and not isinstance(content, str):
            raise InvalidRequestError("content must be a string or a list of text parts",
                                      param=f"messages[{i}].content")
        if m.role == "tool" and not m.tool_call_id:
            raise InvalidRequestError("a tool message needs the tool_call_id it answers",
                                      param=f"messages[{i}].tool_call_id")
        msg: dict[str, Any] = {"role": m.role, "content": content or ""}
        for key in ("name", "tool_call_id"):
            if getattr(m, key) is not None:
                msg[key] = getattr(m, key)
        if calls := history_calls(i, m.role, m.tool_calls):
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def max_tokens_for(req: _GenerationRequest, prompt_len: int, max_model_len: int,
                   prompt_param: str) -> int:
    """The output budget; a prompt that leaves no room, or a budget past the context, is a 400."""
    room = max_model_len - prompt_len
    if room < 1:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt has {prompt_len} tokens, which leaves no room for output.",
            param=prompt_param, code="context_length_exceeded")
    asked, param = req.max_tokens, "max_tokens"
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        asked, param = req.max_completion_tokens, "max_completion_tokens"
    if asked is None:
        return min(room, 16) if isinstance(req, CompletionRequest) else room
    if asked > room:
        raise InvalidRequestError(
            f"{param} is too large: {asked}. This model's maximum context length is "
            f"{max_model_len} tokens and your request has {prompt_len} input tokens "
            f"({asked} > {max_model_len} - {prompt_len}).", param=param)
    return asked


def sampling_params(req: _GenerationRequest, max_tokens: int, index: int,
                    vocab_size: int) -> SamplingParams:
    """Params of the `index`-th engine request of this body (seed + index keeps n>1 distinct)."""
    stop_ids = tuple(req.stop_token_ids or ())
    if any(not 0 <= t < vocab_size for t in stop_ids):
        raise InvalidRequestError(f"stop_token_ids must be in [0, {vocab_size})",
                                  param="stop_token_ids")
    prompt_logprobs = None
    if isinstance(req, CompletionRequest):
        logprobs = req.logprobs
        prompt_logprobs = req.logprobs if req.echo else None  # echo's logprobs cover the prompt
    else:
        assert isinstance(req, ChatCompletionRequest)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
    if (req.min_tokens or 0) > max_tokens:
        raise InvalidRequestError(f"min_tokens ({req.min_tokens}) must not exceed the request's "
                                  f"max tokens ({max_tokens})", param="min_tokens")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        seed=None if req.seed is None else req.seed + index,
        stop=stop_strings(req.stop),
        stop_token_ids=stop_ids,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        logit_bias=logit_biases(req.logit_bias, vocab_size),
        min_tokens=req.min_tokens or 0,
        prompt_logprobs=prompt_logprobs,
        guided=response_format_guided(req.response_format),
    )


def response_format_guided(value: Any) -> GuidedDecoding | None:
    """OpenAI's `response_format` as a constraint: `text` is none, `json_object` any JSON
    object, `json_schema` its `json_schema.schema`. A bad shape, or a schema feature the grammar
    engine cannot enforce, is a 400 naming it, never an unconstrained answer."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return GuidedDecoding("json_object")
    if kind != "json_schema":
        raise InvalidRequestError("response_format must be an object whose type is 'text', "
                                  "'json_object' or 'json_schema'", param="response_format")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidRequestError("response_format.json_schema must be an object with a "
                                  "string 'name'", param="response_format.json_schema")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict) or not isinstance(spec.get("strict", False), bool):
        raise InvalidRequestError("response_format.json_schema.schema must be an object and "
                                  "strict a boolean", param="response_format.json_schema")
    guided = GuidedDecoding("json_schema", json.dumps(schema))
    try:
        check_guided(guided)
    except GuidedDecodingError as exc:
        raise InvalidRequestError(f"response_format: {exc}",
                                  param="response_format.json_schema.schema") from None
    return guided


def request_contract(req: _GenerationRequest, request_id: str, model: str,
                     inputs: dict[str, Any], params: SamplingParams) -> RequestContract:
    """Map the body onto `aruntime.request/v1`; its own checks still apply (tenant names...)."""
    extra = dict(req.aruntime or {})
    unknown = sorted(set(extra) - ARUNTIME_FIELDS)
    if unknown:
        raise InvalidRequestError(
            f"unknown field in aruntime: {unknown[0]!r}; "
            f"allowed: {', '.join(sorted(ARUNTIME_FIELDS))}",
            param=f"aruntime.{unknown[0]}")
    if req.user and "principal" not in extra:
        extra["principal"] = req.user
    data = {
        "id": request_id, "model": model, "stream": req.stream, "inputs": inputs,
        "kind": "chat" if isinstance(req, ChatCompletionRequest) else "completion",
        "sampling": {
            "max_tokens": params.max_tokens, "temperature": params.temperature,
            "top_p": params.top_p, "top_k": params.top_k, "seed": req.seed, "n": req.n,
            "stop": list(params.stop), "stop_token_ids": list(params.stop_token_ids),
            "logprobs": params.logprobs, "ignore_eos": params.ignore_eos,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "repetition_penalty": params.repetition_penalty,
            "logit_bias": {str(t): b for t, b in params.logit_bias},
            "min_tokens": params.min_tokens,
        },
        **extra,
    }
    try:
        return RequestContract.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        if loc and loc[0] == "sampling":
            param = _param(loc[1:])
        elif loc == ["principal"] and "principal" not in (req.aruntime or {}):
            param = "user"
        elif loc and loc[0] == "inputs":
            param = "messages" if "messages" in inputs else "prompt"
        else:
            param = "aruntime." + _param(loc) if loc else "aruntime"
        raise InvalidRequestError(f"Invalid value for '{param}': {err['msg']}",
                                  param=param) from None


def sse_event(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"
