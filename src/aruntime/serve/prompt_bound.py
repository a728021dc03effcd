"""A prompt's length bounded from its bytes, before the tokenizer sees it, and prompts prepared
off the event loop.

No token stands for more than `longest` bytes of text, so a text of B bytes makes at least
ceil(B / longest) tokens: when even that leaves no room under the model's context, the request
is a 400 at once, not after seconds of tokenizing. The bound holds only for tokenizers that
never drop or shrink text on the way to tokens (no unicode normalization, no stripping, no
whitespace-splitting pre-tokenizer, no fused unknowns, no added token that swallows the spaces
beside it, no truncation); for any other `longest_token_bytes` says None and every prompt is
tokenized.

Tokenizing and rendering a long prompt take the GIL-free tokenizer (engine/tokenizer.py) and
the template engine seconds; `off_loop` runs them on a worker thread so that /health and other
requests go on meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from aruntime.engine.tokenizer import ChatTemplateError, Tokenizer
from aruntime.serve import protocol as p
from aruntime.serve.errors import InvalidRequestError
from aruntime.serve.tool_parsers import ToolParser
from aruntime.serve.tool_prompts import render_chat
from aruntime.serve.tool_specs import ToolPlan

T = TypeVar("T")
# One body's engine requests: past this, planning and answering it hold the event loop for
# long enough to be felt by every other request (1000 prompts x n=16 held /health for 2 s).
MAX_CHOICES = 256
INLINE_CHARS = 16 * 1024  # shorter prompts are prepared in place: microseconds, no thread hop
# Normalizers and pre-tokenizers that keep every byte of the text (they may add some).
_KEEPING_NORMALIZERS = frozenset({"Prepend", "Replace", "ByteLevel"})
_KEEPING_PRE_TOKENIZERS = frozenset({"ByteLevel", "Metaspace", "Digits", "Split", "Punctuation",
                                     "UnicodeScripts"})
_UTF8_CHAR = 4  # an unknown character becomes one unknown token: up to 4 bytes


def longest_token_bytes(tokenizer: Tokenizer) -> int | None:
    """The most bytes of text one token of this tokenizer can stand for, or None when its
    pipeline may drop or shrink text (then the bytes bound nothing)."""
    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (model.get("fuse_unk") and not model.get("byte_fallback")):
        return None
    if spec.get("truncation") is not None:  # it counts what is left, not what was sent
        return None
    if not _keeps(spec.get("normalizer"), _KEEPING_NORMALIZERS) or not _keeps(
            spec.get("pre_tokenizer"), _KEEPING_PRE_TOKENIZERS):
        return None
    added = spec.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") for t in added):
        return None
    # A byte-level vocabulary spells each byte as one character (some of two UTF-8 bytes).
    byte_level = _has_type(spec.get("pre_tokenizer"), "ByteLevel")
    vocab = model.get("vocab") or {}
    longest = max((len(t) if byte_level else len(t.encode()) for t in vocab), default=1)
    longest = max([longest, *(len(t["content"].encode()) for t in added)])
    return max(longest, _UTF8_CHAR) if model.get("unk_token") else longest


def _parts(component: dict[str, Any] | None) -> list[dict[str, Any]]:
    if component is None:
        return []
    if component.get("type") == "Sequence":
        inner = component.get("normalizers") or component.get("pretokenizers") or []
        return [p for c in inner for p in _parts(c)]
    return [component]


def _keeps(component: dict[str, Any] | None, keeping: frozenset[str]) -> bool:
    for part in _parts(component):
        kind = part.get("type")
        if kind not in keeping or part.get("behavior") == "Removed":
            return False
        if kind == "Replace":  # only a literal pattern replaced by no shorter text keeps length
            pattern = (part.get("pattern") or {}).get("String")
            if not isinstance(pattern, str) or len(part.get("content", "").encode()) < len(
                    pattern.encode()):
                return False
    return True


def _has_type(component: dict[str, Any] | None, kind: str) -> bool:
    return any(part.get("type") == kind for part in _parts(component))


def check_text(text: str, longest: int | None, max_model_len: int, param: str) -> None:
    """A 400 when `text`'s bytes alone prove it leaves no room for output (context_length
    _exceeded, as from the token count)."""
    if longest is None or 4 * len(text) <= (max_model_len - 1) * longest:  # 4: UTF-8's most
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    fewest = -(-size // longest)
    if fewest >= max_model_len:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt has at least {fewest} tokens ({size} bytes, and no token of this model "
            f"stands for more than {longest}), which leaves no room for output.",
            param=param, code="context_length_exceeded")


def completion_prompts(tokenizer: Tokenizer, prompt: Any, n: int, longest: int | None,
                       max_model_len: int) -> list[list[int]]:
    """protocol.completion_prompts, each text first bounded by its bytes, and the batch by the
    engine requests it fans out into (each prompt n times)."""
    texts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
    batch = 1 if not texts or all(isinstance(t, int) for t in texts) else len(texts)
    if batch * n > MAX_CHOICES:
        raise InvalidRequestError(
            f"A request may ask for at most {MAX_CHOICES} completions (prompts times n); this "
            f"one asks for {batch} x {n}", param="prompt")
    for text in texts:
        if isinstance(text, str):
            check_text(text, longest, max_model_len, "prompt")
    return p.completion_prompts(prompt, tokenizer)


def chat_prompt(tokenizer: Tokenizer, messages: list[dict[str, Any]], tools: ToolPlan,
                parser: ToolParser, longest: int | None, max_model_len: int) -> list[int]:
    """The conversation rendered with its tools, bounded by its bytes, then tokenized."""
    try:
        text = render_chat(tokenizer, messages, tools, parser)
    except ChatTemplateError as exc:
        raise InvalidRequestError(str(exc), param="messages") from None
    check_text(text, longest, max_model_len, "messages")
    # The template already spells the special tokens it wants (BOS included).
    prompt = tokenizer.encode(text, add_special_tokens=False)
    if not prompt:
        raise InvalidRequestError("messages rendered to an empty prompt", param="messages")
    return prompt


def prompt_chars(prompt: Any) -> int:
    """How much preparing `prompt` (a string, a list of them, of token ids, or of messages) may
    cost, cheaply (a wrong shape is refused by the preparation itself)."""
    if isinstance(prompt, str | list):
        return sum(map(_size, prompt)) if isinstance(prompt, list) else len(prompt)
    return 1


def _size(item: Any) -> int:
    if isinstance(item, dict):  # a chat message
        item = item.get("content")
    return len(item) if isinstance(item, str | list) else 1


async def off_loop(chars: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`: in place when it is short (`chars`), else on a worker thread."""
    if chars <= INLINE_CHARS:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)
