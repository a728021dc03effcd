"""Random-weight demo checkpoints in Hugging Face format, built offline.

The weights are random (seeded), but everything else is real: a byte-level BPE tokenizer trained
here on a corpus generated in code, a ChatML chat template, and safetensors that transformers
loads as is. They exercise the whole serving path without fetching anything.

Heavy imports (torch, tokenizers, safetensors) are deferred: the CLI imports this module just to
build its argument parser.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aruntime import paths
from aruntime.engine.config import SUPPORTED_ARCHITECTURES

if TYPE_CHECKING:
    import torch

    from aruntime.engine.config import ModelConfig


@dataclass(frozen=True, slots=True)
class DemoSize:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int


SIZES = {
    "tiny": DemoSize(64, 2, 4, 2, 160, 2048),
    # the default model's 3 query heads per KV head and 3 KV heads, which 2 ranks split unevenly
    "tiny-gqa3": DemoSize(144, 2, 9, 3, 160, 2048),
    "small": DemoSize(512, 8, 8, 4, 1408, 32000),
}
MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
               "Qwen2ForCausalLM": "qwen2"}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2
BOS_ID, IM_START_ID, EOS_ID = 0, 1, 2
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NOTE = "aruntime demo checkpoint: the weights are RANDOM (seeded); its output is meaningless text."
# Std of the logits: with 2048-32000 candidates the top two are then rarely within 0.05 of each
# other, so greedy decoding does not flip on float rounding between batch layouts.
LOGIT_STD = 4.0
CORPUS_SEED = 20240601  # the tokenizer depends on the vocabulary size only, never on `seed`

# Frequent English words head the Zipf ranking so merges look like a real tokenizer's.
_COMMON = """the of and to a in is it you that he was for on are with as I his they be at one
have this from or had by hot word but what some we can out other were all there when up use
your how said an each she which do their time if will way about many then them write would
like so these her long make thing see him two has look more day could go come did number sound
no most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every good
me give our under name very through just form sentence great think say help low line differ
turn cause much mean before move right boy old too same tell does set three want air well also
play small end put home read hand port large spell add even land here must big high such follow
act why ask men change went light kind off need house picture try us again animal point mother
world near build self earth father head stand own page should country found answer school grow
study still learn plant cover food sun four between state keep eye never last let thought city
tree cross farm hard start might story saw far sea draw left late run while press close night
real life few north open seem together next white children begin got walk example ease paper
group always music those both mark often letter until mile river car feet care second book
carry took science eat room friend began idea fish mountain stop once base hear horse cut sure
watch color face wood main enough plain girl usual young ready above ever red list though feel
talk bird soon body dog family direct pose leave song measure door product black short numeral
class wind question happen complete ship area half rock order fire south problem piece told
knew pass since top whole king space heard best hour better true during hundred five remember
step early hold west ground interest reach fast verb sing listen six table travel less morning
""".split()  # noqa: SIM905 - word lists read better as prose
_FOREIGN = """café naïve über déjà señor straße 東京 你好 世界 привет мир γειά 😀 🚀 ✓ €
""".split()  # noqa: SIM905
_ONSETS = """b c d f g h j k l m n p r s t v w z bl br ch cl cr dr fl fr gl gr pl pr sc sh sk sl
sm sn sp st sw th tr wh""".split()  # noqa: SIM905
_VOWELS = "a e i o u ai ea ee oo ou ie oa".split()  # noqa: SIM905
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng", "rt", "x"]


def _corpus(vocab_size: int) -> list[str]:
    """Paragraphs of Zipf-sampled words, punctuation, digits and newlines, sized so that BPE
    finds `vocab_size` merges (every pseudo-word also appears once on its own line)."""
    rng = random.Random(CORPUS_SEED)
    pseudo: dict[str, None] = {}
    while len(pseudo) < vocab_size // 2 + 1000:
        syllables = rng.randint(1, 4)
        pseudo["".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                       for _ in range(syllables))] = None
    words = _COMMON + list(pseudo) + _FOREIGN
    sample = rng.choices(words, weights=[1.0 / (r + 1) for r in range(len(words))],
                         k=5 * vocab_size)
    lines, i = [], 0
    while i < len(sample):
        n = rng.randint(4, 16)
        sentence = " ".join(sample[i:i + n]).capitalize() + rng.choice(".,.!?;:")
        if rng.random() < 0.2:
            sentence += f" {rng.randint(0, 10 ** rng.randint(1, 5))}"
        lines.append(sentence + ("\n\n" if rng.random() < 0.1 else "\n"))
        i += n
    return ["".join(lines[j:j + 8]) for j in range(0, len(lines), 8)] + list(pseudo)


# transformers rebuilds a `qwen2` tokenizer with this split and NFC whatever tokenizer.json says
# (Qwen2Tokenizer); the Qwen2 demo uses the same, so that transformers and we agree on ids.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TOKENIZER_STYLES = ("gpt2", "qwen2")


@functools.lru_cache(maxsize=4)
def train_tokenizer(vocab_size: int, style: str = "gpt2") -> str:
    """A byte-level BPE tokenizer with exactly `vocab_size` entries, as tokenizer.json text.

    style "gpt2": GPT-2's split, no normalizer, so any text round-trips exactly. "qwen2": Qwen2's
    split (single digits) and NFC, so text that is not NFC comes back composed.
    Training is deterministic: the corpus is seeded, and the `tokenizers` BPE trainer breaks
    count ties by pair ids, which follow the sorted byte alphabet (checked by the tests).
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    if style not in TOKENIZER_STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}")
    tok = Tokenizer(models.BPE())
    if style == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(vocab_size), trainer=trainer)
    if tok.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise RuntimeError(f"BPE training reached {tok.get_vocab_size()} of {vocab_size} tokens")
    return str(tok.to_str())


def demo_config(size: str, architecture: str) -> dict[str, Any]:
    """config.json for a demo checkpoint."""
    s = SIZES[size]
    cfg: dict[str, Any] = {
        "architectures": [architecture], "model_type": MODEL_TYPES[architecture],
        "hidden_size": s.hidden_size, "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_hidden_layers, "num_attention_heads": s.num_attention_heads,
        "num_key_value_heads": s.num_key_value_heads,
        "head_dim": s.hidden_size // s.num_attention_heads, "hidden_act": "silu",
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "vocab_size": s.vocab_size, "tie_word_embeddings": False,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "torch_dtype": "float32",
        "attention_bias": architecture == "Qwen2ForCausalLM", "use_cache": True,
        "aruntime_demo": True, "aruntime_demo_size": size, "aruntime_note": NOTE,
    }
    if architecture == "LlamaForCausalLM":
        cfg["mlp_bias"] = False
    else:  # Mistral and Qwen2 would otherwise default to a sliding attention window
        cfg["sliding_window"] = None
        cfg["use_sliding_window"] = False
    return cfg


def _init_std(name: str, shape: tuple[int, ...], config: ModelConfig) -> float:
    """Scales that keep activations O(1) through the layers and the logits well spread."""
    if name.endswith("embed_tokens.weight"):
        return 1.0
    if name == "lm_head.weight":
        return LOGIT_STD / math.sqrt(config.hidden_size)  # final RMSNorm output has rms ~1
    if name.endswith(".bias"):
        return 0.1
    if name.endswith(("o_proj.weight", "down_proj.weight")):  # writes into the residual stream
        return 1.0 / math.sqrt(shape[1] * 2 * config.num_hidden_layers)
    return 1.0 / math.sqrt(shape[1])


def demo_weights(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded fp32 tensors under HF names; RMSNorm weights are 1 plus small noise."""
    import torch

    from aruntime.engine.loader import expected_weight_shapes

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in expected_weight_shapes(config).items():
        is_norm = name.endswith("norm.weight")
        mean, std = (1.0, 0.05) if is_norm else (0.0, _init_std(name, shape, config))
        out[name] = torch.empty(shape, dtype=torch.float32).normal_(mean, std, generator=gen)
    return out


def _tokenizer_config() -> dict[str, Any]:
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)}
    return {
        "add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": added,
        "bos_token": SPECIAL_TOKENS[BOS_ID], "eos_token": SPECIAL_TOKENS[EOS_ID],
        "pad_token": SPECIAL_TOKENS[BOS_ID], "unk_token": None, "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _write_files(out: Path, size: str, architecture: str, seed: int) -> None:
    from safetensors.torch import save_file

    from aruntime.engine.config import ModelConfig

    cfg = demo_config(size, architecture)
    dump = functools.partial(json.dumps, indent=2, ensure_ascii=False)
    (out / "config.json").write_text(dump(cfg) + "\n", encoding="utf-8")
    gen_cfg = {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, BOS_ID], "pad_token_id": BOS_ID,
               "do_sample": False}
    (out / "generation_config.json").write_text(dump(gen_cfg) + "\n", encoding="utf-8")
    style = "qwen2" if architecture == "Qwen2ForCausalLM" else "gpt2"
    (out / "tokenizer.json").write_text(train_tokenizer(cfg["vocab_size"], style),
                                        encoding="utf-8")
    (out / "tokenizer_config.json").write_text(dump(_tokenizer_config()) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        f"# ARuntime demo model ({size}, {architecture}, seed {seed})\n\n{NOTE}\n\n"
        "Written by `aruntime demo-model`. The tokenizer is a byte-level BPE trained offline on "
        "generated text; the chat template is ChatML.\n", encoding="utf-8")
    save_file(demo_weights(ModelConfig.from_hf(cfg), seed), str(out / "model.safetensors"),
              metadata={"format": "pt"})


def _demo_config(path: Path) -> dict[str, Any] | None:
    """The config of a demo checkpoint at `path`, None if there is none (rename made it whole)."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and cfg.get("aruntime_demo") is True else None


def is_demo_checkpoint(path: Path) -> bool:
    return _demo_config(path) is not None


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not is_demo_checkpoint(target):
        raise FileExistsError(f"{target} is not empty and is not a demo checkpoint")


def _publish(tmp: Path, target: Path, replace: bool) -> None:
    """Move a complete checkpoint into place; readers never see a partial directory."""
    try:
        os.rename(tmp, target)  # atomic, and replaces an empty directory
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if not replace or not is_demo_checkpoint(target):
        shutil.rmtree(tmp)  # a concurrent writer won the race: keep its copy
        _check_target(target)
        return
    old = tmp.with_name(tmp.name + "-old")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)  # put the previous checkpoint back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write(target: Path, size: str, architecture: str, seed: int, replace: bool) -> Path:
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose from {', '.join(SIZES)}")
    if architecture not in MODEL_TYPES:
        raise ValueError(f"unsupported architecture {architecture!r}; "
                         f"choose from {', '.join(SUPPORTED_ARCHITECTURES)}")
    target = target.absolute()
    _check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a models directory is meant to be shared
        _write_files(tmp, size, architecture, seed)
        _publish(tmp, target, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left over if something failed
    return target


def write_demo_model(dir: Path, size: str = "small", architecture: str = "LlamaForCausalLM",
                     seed: int = 0) -> Path:
    """Write a demo checkpoint to `dir` (missing, empty, or an older demo checkpoint, which is
    replaced). Any other non-empty directory is refused with FileExistsError."""
    return _write(Path(dir), size, architecture, seed, replace=True)


def ensure_demo_model(size: str = "small") -> Path:
    """The shared demo checkpoint of this size, written on first use. Processes racing to
    create it each build a copy; the first rename wins and the others discard theirs."""
    target = paths.models_dir() / f"demo-{size}"
    cfg = _demo_config(target)
    if cfg is not None and cfg.get("aruntime_demo_size") == size:
        return target
    # A demo of another size put there by hand is replaced; anything else is refused.
    return _write(target, size, "LlamaForCausalLM", 0, replace=cfg is not None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", type=Path, help="directory to write")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="tiny: for tests; small: ~56M parameters (default)")
    parser.add_argument("--architecture", choices=SUPPORTED_ARCHITECTURES,
                        default="LlamaForCausalLM")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from aruntime.errors import UsageError

    try:
        path = write_demo_model(args.dir, args.size, args.architecture, args.seed)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.dir}: {exc.strerror or exc}") from None
    print(path)
    return 0
