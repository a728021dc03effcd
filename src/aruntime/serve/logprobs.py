"""OpenAI's logprobs objects in responses: chat's `content` list and the legacy completions
shape, with the prompt's part under `echo`."""

from __future__ import annotations

from typing import Any

from aruntime.engine.outputs import TokenLogprob

_MIN_LOGPROB = -9999.0  # JSON has no -inf


def _token_text(tokenizer: Any, token_id: int) -> str:
    text: str = tokenizer.decode([token_id], skip_special_tokens=False)
    return text


def chat_logprobs(tokenizer: Any, lps: list[TokenLogprob]) -> dict[str, Any]:
    """Chat's shape: `{"content": [{token, logprob, bytes, top_logprobs}], "refusal"}`."""
    def entry(token_id: int, value: float) -> dict[str, Any]:
        s = _token_text(tokenizer, token_id)
        return {"token": s, "logprob": max(value, _MIN_LOGPROB), "bytes": list(s.encode())}

    return {"content": [{**entry(t.token_id, t.logprob),
                         "top_logprobs": [entry(i, v) for i, v in t.top]} for t in lps],
            "refusal": None}


def completion_logprobs(tokenizer: Any, lps: list[TokenLogprob],
                        offset: int) -> tuple[dict[str, Any], int]:
    """The legacy completions shape; returns it and the text offset after these tokens."""
    tokens = [_token_text(tokenizer, t.token_id) for t in lps]
    offsets = []
    for s in tokens:
        offsets.append(offset)
        offset += len(s)
    return {"tokens": tokens, "token_logprobs": [max(t.logprob, _MIN_LOGPROB) for t in lps],
            "top_logprobs": [{_token_text(tokenizer, i): max(v, _MIN_LOGPROB) for i, v in t.top}
                             for t in lps],
            "text_offset": offsets}, offset


def echo_logprobs(tokenizer: Any, prompt: list[int],
                  lps: list[TokenLogprob | None]) -> tuple[dict[str, Any], int]:
    """The prompt's part of the legacy shape under `echo`: its first token has no context, so
    its logprob and top logprobs are null. Returns it and the text offset after the prompt."""
    first = _token_text(tokenizer, prompt[0])
    rest, offset = completion_logprobs(tokenizer, [t for t in lps[1:] if t is not None],
                                       len(first))
    return {"tokens": [first, *rest["tokens"]],
            "token_logprobs": [None, *rest["token_logprobs"]],
            "top_logprobs": [None, *rest["top_logprobs"]],
            "text_offset": [0, *rest["text_offset"]]}, offset


def joined_logprobs(head: dict[str, Any], tail: dict[str, Any]) -> dict[str, Any]:
    """Two pieces of the legacy shape, one after the other."""
    return {key: head[key] + tail[key] for key in head}
