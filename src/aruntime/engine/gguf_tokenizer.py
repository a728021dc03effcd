"""A GGUF file's tokenizer, rebuilt from its metadata with `tokenizers`: llama.cpp stores the
vocabulary, merges, token types and special ids, but no tokenizer.json.

Byte-level BPE (`tokenizer.ggml.model = gpt2`) only. The pre-tokenizer follows
`tokenizer.ggml.pre` the way transformers' GGUF loader reads it, so that both give the same ids:
GPT-2's split for `gpt2` and `smollm`, the split the merges were learned on for the Llama 3 and
Qwen2 families. Any other pre-type is an error naming it, never a silent guess.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aruntime.engine.gguf_checkpoint import field
from aruntime.engine.loader import CheckpointError
from aruntime.engine.tokenizer import Tokenizer

if TYPE_CHECKING:
    import tokenizers
    from gguf import GGUFReader

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> the split regex before the byte-level mapping; None: GPT-2's own split.
# SmolLM's original tokenizer also isolates digits; its merges join no digits, so GPT-2's split
# gives the same ids (and is what transformers builds).
PRE_TOKENIZERS: dict[str, str | None] = {
    "gpt2": None, "smollm": None,
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types
_SPECIALS = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown",
             "pad_token": "padding"}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters, in which byte-level BPE spells
    its tokens: printable Latin-1 stands for itself, the rest moves past U+0100."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    spelled = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in spelled:
            spelled[b] = chr(256 + extra)
            extra += 1
    return spelled


def gguf_tokenizer(reader: GGUFReader) -> Tokenizer:
    """The Tokenizer a GGUF file describes, with its chat template and special tokens."""
    model = field(reader, "tokenizer.ggml.model", None)
    if model != "gpt2":
        raise CheckpointError(f"unsupported GGUF tokenizer model {model!r}; this engine reads "
                              "'gpt2' (byte-level BPE)")
    pre = field(reader, "tokenizer.ggml.pre", "gpt2")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"unsupported GGUF pre-tokenizer {pre!r}; this engine reads "
                              f"{', '.join(PRE_TOKENIZERS)}")
    tokens: list[str] = field(reader, "tokenizer.ggml.tokens")
    types: list[int] = field(reader, "tokenizer.ggml.token_type", [])
    merges: list[str] = field(reader, "tokenizer.ggml.merges")
    backend = build_backend(tokens, merges, types, PRE_TOKENIZERS[pre])
    specials = {name: tokens[int(i)] for name, key in _SPECIALS.items()
                if (i := field(reader, f"tokenizer.ggml.{key}_token_id", None)) is not None
                and 0 <= int(i) < len(tokens)}
    return Tokenizer(backend, chat_template=field(reader, "tokenizer.chat_template", None),
                     special_tokens=specials,
                     add_bos_token=bool(field(reader, "tokenizer.ggml.add_bos_token", False)))


def build_backend(tokens: list[str], merges: list[str], types: list[int],
                  split: str | None) -> tokenizers.Tokenizer:
    """Byte-level BPE over the file's vocabulary and merges; control tokens added as special
    tokens and user-defined ones as plain added tokens, so that text holding them keeps them
    whole, as llama.cpp does."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    alphabet = byte_alphabet()
    letters = set(alphabet.values())
    # A token not spelled in the byte alphabet (a literal space, say) is respelled byte by byte.
    vocab = {t if set(t) <= letters else "".join(alphabet[b] for b in t.encode()): i
             for i, t in enumerate(tokens)}
    pairs = [_merge(m) for m in merges]
    backend = Backend(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    kinds = list(zip(tokens, types, strict=False))
    # A control token outside the byte alphabet is a converter's mislabel; adding it would grow
    # the vocabulary past the model's rows (transformers skips it too).
    control = [t for t, k in kinds if k == _CONTROL and set(t) <= letters]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    user = [t for t, k in kinds if k == _USER_DEFINED and t in vocab]
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    return backend


def _merge(text: Any) -> tuple[str, str]:
    parts = str(text).split(" ")
    if len(parts) != 2:
        raise CheckpointError(f"GGUF merge {text!r} is not two tokens separated by a space")
    return parts[0], parts[1]
