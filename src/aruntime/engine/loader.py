"""Open a checkpoint: a Hugging Face directory (config, tokenizer, safetensors) or a GGUF file
(engine/gguf_checkpoint.py); either gives its config, tokenizer, weights and a content digest.

Everything that can be wrong with a directory is reported as a CheckpointError that names the
file and what is wrong with it, so `serve --model DIR` fails with one readable line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aruntime.engine.config import ModelConfig, ModelConfigError
from aruntime.engine.tokenizer import Tokenizer, TokenizerError
from aruntime.jsonfile import read_json_object

if TYPE_CHECKING:  # torch is imported when weights are read, not to check a directory
    import torch

_CHUNK = 1 << 20
_INDEX = "model.safetensors.index.json"
SEALED_MANIFEST = "sealed.json"  # confidential/sealed_weights.py's MANIFEST
_MAX_LISTED = 10  # names shown in one error message; the rest are counted


class CheckpointError(ValueError):
    """A checkpoint directory cannot be loaded; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    revision: str  # "sha256:<hex>" over config, tokenizer and weight files (or the GGUF file)
    weight_files: tuple[Path, ...] = ()
    format: str = "safetensors"  # or "gguf", or "sealed" (confidential/sealed_weights.py)
    # A GGUF file's open reader: parsing its metadata takes seconds, so weights() reuses it.
    reader: Any = field(default=None, repr=False, compare=False)
    manifest: Any = field(default=None, repr=False, compare=False)  # a sealed model's

    def weights(self, kbs_url: str | None = None) -> dict[str, torch.Tensor]:
        """All tensors of all weight files, named exactly as stored (loaded on CPU); a GGUF's
        dequantized to float32 under Hugging Face names; a sealed model's opened in memory with
        the key the broker at `kbs_url` releases to this boundary."""
        if self.format == "sealed":
            return self._released(kbs_url)
        if self.format == "gguf":
            from aruntime.engine.gguf_checkpoint import gguf_weights

            return gguf_weights(self.path, self.config, self.reader)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        out: dict[str, torch.Tensor] = {}
        for file in self.weight_files:
            try:
                tensors = load_file(str(file), device="cpu")
            except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
                raise CheckpointError(f"cannot read weights from {file}: {exc}") from None
            dup = out.keys() & tensors.keys()
            if dup:
                raise CheckpointError(f"{file} repeats tensors already loaded: {_listed(dup)}")
            out.update(tensors)
        return out


    def _released(self, kbs_url: str | None) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load

        from aruntime.confidential.model_release import ReleaseError, released_files

        out: dict[str, torch.Tensor] = {}
        try:
            for plain in released_files(self.manifest, self.weight_files, self.revision, kbs_url):
                out.update(load(bytes(plain)))
                plain[:] = b""  # the buffer goes now, not when the collector gets to it
        except (ReleaseError, SafetensorError) as exc:
            raise CheckpointError(f"{self.path}: {exc}") from None
        return out


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Check a checkpoint directory or GGUF file and open its config and tokenizer (weights stay
    on disk)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file():
        from aruntime.engine.default_model import is_gguf_file
        from aruntime.engine.gguf_checkpoint import load_gguf_checkpoint

        if not is_gguf_file(path):
            raise CheckpointError(f"checkpoint path {path} is not a directory (nor a GGUF file)")
        return load_gguf_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is not a directory")
    config = _read_config(path)
    if (path / SEALED_MANIFEST).is_file():
        return _sealed_checkpoint(path, config)
    weight_files = _weight_files(path)
    hashed = [*_plain_files(path), *weight_files]
    return Checkpoint(path=path, config=config, tokenizer=_tokenizer(path),
                      revision=revision_digest(path, hashed), weight_files=tuple(weight_files))


def _tokenizer(path: Path) -> Tokenizer:
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path} has no tokenizer.json")
    try:
        return Tokenizer.from_dir(path)
    except TokenizerError as exc:
        raise CheckpointError(str(exc)) from None


def _plain_files(path: Path) -> list[Path]:
    """The files besides the weights that a revision covers."""
    names = ["config.json", "tokenizer.json", "tokenizer_config.json"]
    return [path / n for n in names if (path / n).is_file()]


def _sealed_checkpoint(path: Path, config: ModelConfig) -> Checkpoint:
    """A directory whose weights are sealed: its revision is the plaintext's — the digests
    the manifest declares for the weights, which opening them checks — so the boundary
    measures the model before it can read it."""
    from aruntime.confidential.sealed_weights import Manifest, SealedModelError

    try:
        manifest = Manifest.load(path)
    except SealedModelError as exc:
        raise CheckpointError(str(exc)) from None
    sealed = manifest.sealed_paths(path)
    missing = [p.name for p in sealed if not p.is_file()]
    if missing:
        raise CheckpointError(f"{path} lacks sealed weight files: {_listed(missing)}")
    declared = {f.name: f.sha256.removeprefix("sha256:") for f in manifest.files}
    revision = revision_digest(path, _plain_files(path), declared)
    if revision != manifest.revision:
        raise CheckpointError(f"{path}: the config or tokenizer differs from what was sealed "
                              f"(revision {revision[:19]}, manifest {manifest.revision[:19]})")
    return Checkpoint(path=path, config=config, tokenizer=_tokenizer(path), revision=revision,
                      weight_files=tuple(sealed), format="sealed", manifest=manifest)


def _read_config(path: Path) -> ModelConfig:
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{path} has no config.json")
    raw = read_json_object(file, CheckpointError)
    try:
        return ModelConfig.from_hf(raw)
    except ModelConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None


def _weight_files(path: Path) -> list[Path]:
    """The shards an index lists, or else every *.safetensors file in the directory."""
    index = path / _INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
                AttributeError) as exc:
            raise CheckpointError(f"{index} is not a valid shard index: {exc}") from None
        files = [path / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {_listed(missing)}")
        return files
    files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if not files:
        raise CheckpointError(f"{path} has no *.safetensors weight files")
    return files


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def revision_digest(root: Path, files: list[Path], declared: dict[str, str] | None = None) -> str:
    """One digest over (relative name, sha256) pairs, sorted so that listing order is moot:
    two directories with identical content get the same revision wherever they live.
    `declared`: more (name, sha256 hex) pairs, for files not on disk in the clear."""
    pairs = [(str(f.relative_to(root)), file_sha256(f)) for f in files]
    outer = hashlib.sha256()
    for name, digest in sorted(pairs + list((declared or {}).items())):
        outer.update(f"{name}\0{digest}\n".encode())
    return "sha256:" + outer.hexdigest()


def expected_weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of a Llama/Mistral/Qwen2 decoder, in layer order."""
    h, inter, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q_dim, kv_dim = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, h)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        for proj, rows in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
            shapes[p + f"self_attn.{proj}_proj.weight"] = (rows, h)
            if config.attention_bias:
                shapes[p + f"self_attn.{proj}_proj.bias"] = (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (h, q_dim)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
    shapes["model.norm.weight"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    return shapes


def expected_weight_names(config: ModelConfig) -> list[str]:
    return list(expected_weight_shapes(config))


def check_weights(config: ModelConfig, weights: dict[str, Any]) -> None:
    """Raise CheckpointError naming every missing tensor and every shape mismatch.
    Extra tensors (e.g. old `rotary_emb.inv_freq` buffers) are allowed and ignored."""
    missing, wrong = [], []
    for name, shape in expected_weight_shapes(config).items():
        tensor = weights.get(name)
        if tensor is None:
            missing.append(name)
        elif tuple(tensor.shape) != shape:
            wrong.append(f"{name} is {list(tensor.shape)}, expected {list(shape)}")
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_listed(missing)}")
    if wrong:
        problems.append(f"shape mismatch: {_listed(wrong)}")
    if problems:
        raise CheckpointError("weights do not match config.json: " + "; ".join(problems))


def _listed(items: Any) -> str:
    items = sorted(items) if isinstance(items, (set, frozenset)) else list(items)
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")
