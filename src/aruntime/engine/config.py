"""Model and engine configuration: frozen, checked once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aruntime.kv.config import KVConfig

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
# The rope types the model computes (engine/model.py), with the parameters each needs.
ROPE_TYPES: dict[str | None, tuple[str, ...]] = {
    None: (), "default": (), "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
}


class ModelConfigError(ValueError):
    """A checkpoint's config.json cannot be served by this engine."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The subset of a Hugging Face `config.json` that the Llama-family decoder needs."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False  # q/k/v bias (Qwen2 always has it)
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # Mistral's local attention span, when the model uses one
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ModelConfigError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError("num_attention_heads must be a multiple of num_key_value_heads")
        scaling = self.rope_scaling or {}
        rope_type = scaling.get("rope_type", scaling.get("type"))
        if rope_type not in ROPE_TYPES:
            raise ModelConfigError(
                f"unsupported rope type {rope_type!r}; this engine computes "
                f"{', '.join(str(t) for t in ROPE_TYPES if t)}")
        missing = [k for k in ROPE_TYPES[rope_type] if k not in scaling]
        if missing:
            raise ModelConfigError(f"rope type {rope_type!r} needs {', '.join(missing)}")

    def kv_bytes_per_token(self, itemsize: int = 4) -> int:
        """K and V of one token across all layers: what a cache block is sized by."""
        return self.num_hidden_layers * 2 * self.num_key_value_heads * self.head_dim * itemsize

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build from a parsed config.json; missing or mistyped fields are a ModelConfigError."""
        archs = cfg.get("architectures") or []
        if not isinstance(archs, list) or not archs:
            raise ModelConfigError("config.json has no 'architectures' list")
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            eos = cfg.get("eos_token_id")
            eos_ids = tuple(int(e) for e in eos) if isinstance(eos, list) else (
                () if eos is None else (int(eos),))
            arch = str(archs[0])
            rope_theta, rope_scaling = _rope(cfg)
            return cls(
                architecture=arch,
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                attention_bias=arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                # Qwen2 configs carry a window they only use when use_sliding_window is set
                sliding_window=(int(cfg["sliding_window"]) if cfg.get("sliding_window") and (
                    arch != "Qwen2ForCausalLM" or cfg.get("use_sliding_window")) else None),
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_ids=eos_ids,
            )
        except KeyError as exc:
            raise ModelConfigError(f"config.json is missing {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ModelConfigError):
                raise
            raise ModelConfigError(f"config.json has a malformed field: {exc}") from None


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) in either spelling: transformers < 5 writes `rope_theta` and
    `rope_scaling` at the top level, transformers >= 5 both inside `rope_parameters`."""
    params = cfg.get("rope_parameters")
    if params is None:
        scaling = cfg.get("rope_scaling")
        if scaling is not None and not isinstance(scaling, dict):
            raise ModelConfigError("config.json's rope_scaling must be an object")
        return float(cfg.get("rope_theta", 10000.0)), scaling
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise ModelConfigError("config.json's rope_parameters must be one object of numbers "
                               "(per-layer-type rope is not supported)")
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    kind = scaling.get("rope_type", scaling.get("type"))
    return theta, (scaling if kind not in (None, "default") else None)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How the engine runs a model. Runtime findings (block count, eos ids) live elsewhere."""

    model: str  # a Hugging Face checkpoint directory
    kv_cache_bytes: int = 256 * 1024 * 1024
    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024  # per-step token budget (chunked prefill)
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    dtype: str = "float32"
    enable_prefix_caching: bool = True
    kv: KVConfig = field(default_factory=KVConfig)  # stores beyond the device, KV events
    worker_id: str | None = None  # this engine's name in the cache directory; default host:pid
    native_kernels: bool = True  # the C decode-attention kernel on CPU (fp32); False: PyTorch only
    kbs_url: str | None = None  # the key broker that releases a sealed model's weight key
    # which backends run the dense parts: "eager", "auto" (the calibrated table's choice per
    # phase and bucket) or "NAME[,NAME...]" (engine/backends/); their caches and tables live
    # in `backends_dir` (default: the data directory's backends/)
    backends: str = "eager"
    backends_dir: str | None = None
    # a real-time loop's board beside the engine (engine/loop_board.py): yield between steps
    # while the loop runs short of slack, and follow the CPUs the engine is left
    loop_board: str | None = None
    # ranks sharing the model (engine/parallel/): rank 0 is this engine, the others processes
    tensor_parallel: int = 1
    pipeline_parallel: int = 1  # the layers split into this many stages, a rank each
    micro_batches: int = 0  # the parts a pipeline step is cut into, so stages overlap (0: one
    # per stage; 1: none, each stage waiting on the one before it)
    # ... but no part under this many tokens: each part reads all of a stage's weights, so
    # cutting a decode step (bandwidth-bound: 8 rows cost what 4 do) only adds reads; measured
    # on the demo model on 2 cores, an 8-row decode step took 1.4x as long cut in two
    micro_batch_tokens: int = 128

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        if self.kv_cache_bytes <= 0:
            raise ValueError("kv_cache_bytes must be positive")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError("dtype must be float32, bfloat16 or float16")
        if self.micro_batches < 0:
            raise ValueError("micro_batches must be 0 (one per stage) or more")
        if min(self.tensor_parallel, self.pipeline_parallel) < 1:
            raise ValueError("tensor_parallel and pipeline_parallel must be at least 1")
        if self.ranks > 1 and self.backends != "eager":
            raise ValueError("--tensor-parallel runs the eager parts (their collectives); "
                             "compiled --backends are for one rank")

    @property
    def ranks(self) -> int:
        """The processes one engine runs on: its tensor- and pipeline-parallel ranks."""
        return self.tensor_parallel * self.pipeline_parallel
