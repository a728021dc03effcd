"""Open a GGUF file (llama.cpp's one-file checkpoint): the model config from its metadata, its
tensors dequantized to float32 under the Hugging Face names the engine loads.

What the engine cannot serve (another architecture, a quant type without a dequantizer here, a
rope it does not compute) is a CheckpointError naming it, raised when the file is opened, before
any weight is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aruntime.engine.config import ModelConfig, ModelConfigError
from aruntime.engine.loader import Checkpoint, CheckpointError, file_sha256

if TYPE_CHECKING:
    import torch
    from gguf import GGUFReader, ReaderTensor

# llama.cpp's architecture name -> the Hugging Face one whose decoder the engine runs.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Tensor types gguf's numpy dequantizer handles that we have checked against transformers'
# loading (which uses the same dequantizer); the i-quants and ternary types are left out.
QUANT_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
               "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_LAYER_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
                "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_MISSING = object()


def open_reader(path: Path) -> GGUFReader:
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except (OSError, ValueError, KeyError, IndexError) as exc:  # a truncated or corrupt file
        raise CheckpointError(f"cannot read GGUF file {path}: {exc}") from None


def field(reader: GGUFReader, key: str, default: Any = _MISSING) -> Any:
    """A metadata value (arrays as lists); a missing key without a default is a CheckpointError."""
    found = reader.fields.get(key)
    if found is None:
        if default is _MISSING:
            raise CheckpointError(f"GGUF metadata has no {key!r}")
        return default
    return found.contents()


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, None for one the decoder has no place for."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES \
            and parts[3] in ("weight", "bias"):
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def gguf_config(reader: GGUFReader) -> ModelConfig:
    """The engine's ModelConfig from llama.cpp's metadata keys."""
    arch = str(field(reader, "general.architecture"))
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unsupported GGUF architecture {arch!r}; this engine serves "
                              f"{', '.join(ARCHITECTURES)}")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:  # Llama 3.1's frequency factors, stored as a tensor
        raise CheckpointError("GGUF rope frequency factors (rope_freqs.weight) are not supported")

    def key(name: str, default: Any = _MISSING) -> Any:
        return field(reader, f"{arch}.{name}", default)

    try:
        heads, hidden = int(key("attention.head_count")), int(key("embedding_length"))
        tokens = field(reader, "tokenizer.ggml.tokens", [])
        eos = [field(reader, f"tokenizer.ggml.{k}_token_id", None) for k in ("eos", "eot")]
        return ModelConfig(
            architecture=ARCHITECTURES[arch],
            vocab_size=int(key("vocab_size", len(tokens))),
            hidden_size=hidden,
            intermediate_size=int(key("feed_forward_length")),
            num_hidden_layers=int(key("block_count")),
            num_attention_heads=heads,
            num_key_value_heads=int(key("attention.head_count_kv", heads)),
            head_dim=int(key("attention.key_length", key("rope.dimension_count", hidden // heads))),
            max_position_embeddings=int(key("context_length", 2048)),
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=float(key("rope.freq_base", 10000.0)),
            rope_scaling=_rope_scaling(key("rope.scaling.type", None),
                                       key("rope.scaling.factor", None)),
            attention_bias=arch == "qwen2" or "blk.0.attn_q.bias" in names,
            tie_word_embeddings="output.weight" not in names,
            bos_token_id=field(reader, "tokenizer.ggml.bos_token_id", None),
            eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
        )
    except ModelConfigError as exc:
        raise CheckpointError(f"GGUF metadata: {exc}") from None
    except (TypeError, ValueError) as exc:  # a list where a number belongs (per-layer heads)
        raise CheckpointError(f"GGUF metadata has a field this engine cannot use: {exc}") from None


def _rope_scaling(kind: Any, factor: Any) -> dict[str, Any] | None:
    if kind in (None, "none"):
        return None
    if kind == "linear" and factor is not None:
        return {"rope_type": "linear", "factor": float(factor)}
    raise CheckpointError(f"unsupported GGUF rope scaling {kind!r}; this engine computes linear")


def check_tensor_types(reader: GGUFReader, path: Path) -> None:
    bad = sorted({t.tensor_type.name for t in reader.tensors} - set(QUANT_TYPES))
    if bad:
        raise CheckpointError(f"{path.name}: unsupported GGUF tensor type(s) {', '.join(bad)}; "
                              f"supported: {', '.join(QUANT_TYPES)}")


def load_gguf_checkpoint(path: Path) -> Checkpoint:
    """Open a GGUF file's config and tokenizer (the weights are dequantized by `weights()`)."""
    from aruntime.engine.gguf_tokenizer import gguf_tokenizer

    reader = open_reader(path)
    config = gguf_config(reader)
    check_tensor_types(reader, path)
    tokenizer = gguf_tokenizer(reader)
    return Checkpoint(path=path, config=config, tokenizer=tokenizer,
                      revision="sha256:" + file_sha256(path), weight_files=(path,), format="gguf",
                      reader=reader)


def gguf_weights(path: Path, config: ModelConfig,
                 reader: GGUFReader | None = None) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32 under its Hugging Face name; llama's Q and K rows put
    back in the order Hugging Face's rotary embedding expects. `reader`: the file already open."""
    import torch

    reader = reader or open_reader(path)
    check_tensor_types(reader, path)
    unknown = [t.name for t in reader.tensors if hf_name(t.name) is None]
    if unknown:
        raise CheckpointError(f"{path.name} holds tensors this engine has no place for: "
                              f"{', '.join(unknown[:10])}")
    out: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        assert name is not None
        weight = torch.from_numpy(_dequantized(tensor))
        if config.architecture == "LlamaForCausalLM" and name.endswith(
                ("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            weight = unpermute_rows(weight, heads)
        out[name] = weight
    return out


def _dequantized(tensor: ReaderTensor) -> Any:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    # GGUF lists dimensions innermost first; numpy (and Hugging Face) outermost first.
    shape = [int(n) for n in reversed(tensor.shape)]
    if tensor.tensor_type == GGMLQuantizationType.F32:
        return tensor.data.reshape(shape).copy()  # the reader's view is of a read-only map
    return dequantize(tensor.data, tensor.tensor_type).reshape(shape)


def unpermute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's converter, which interleaves each head's two rotary halves so that its
    rope rotates adjacent pairs: rows (head, pair, 2) back to (head, 2, pair)."""
    rows = weight.shape[0]
    return (weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape).contiguous())
