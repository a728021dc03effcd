"""What `aruntime serve` checks of its model arguments before any process starts, each a usage
error in one line: the checkpoint (`--model`), a sealed one's broker (`--kbs`) and the backends
(`--backends`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aruntime.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", default="eager", metavar="auto|eager|NAME,...",
                        help="what runs the model's dense parts: eager PyTorch, the calibrated "
                             "cheapest per phase and bucket (auto; `aruntime backends "
                             "calibrate`), or these (each through the equivalence gate)")
    parser.add_argument("--kbs", default=None, metavar="URL",
                        help="the key broker of a sealed --model (aruntime seal-model): each "
                             "engine attests to it and opens the weights in memory")


def check_model_dir(model: Path) -> None:
    """A bad --model is a usage error with one line, before any process starts. A GGUF file's
    metadata is checked where its tokenizer is read (`_serve`): reading it is the slow part."""
    from aruntime.engine.config import ModelConfig, ModelConfigError
    from aruntime.engine.default_model import is_gguf_file
    from aruntime.engine.loader import SEALED_MANIFEST

    if model.is_file():
        if not is_gguf_file(model):
            raise UsageError(f"--model {model}: not a directory nor a GGUF file")
        return
    if not model.is_dir():
        raise UsageError(f"--model {model}: not a directory nor a GGUF file")
    cfg_file = model / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"--model {model}: no config.json (is it a Hugging Face checkpoint?)") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--model {model}: cannot read config.json: {exc}") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"--model {model}: config.json must hold a JSON object")
    try:
        ModelConfig.from_hf(cfg)
    except ModelConfigError as exc:
        raise UsageError(f"--model {model}: {exc}") from None
    if not any(model.glob("*.safetensors")) and not (model / SEALED_MANIFEST).is_file():
        raise UsageError(f"--model {model}: no *.safetensors weights")


def check_backends(spec: str) -> None:
    from aruntime.engine.backends.registry import known
    from aruntime.engine.backends.registry import names as backend_names

    names = [n.strip() for n in spec.split(",")]
    unknown = [n for n in names if not known(n) and not (n == "auto" and len(names) == 1)]
    if unknown:
        raise UsageError(f"--backends: no backend {unknown[0]!r} "
                         f"(auto, {', '.join(backend_names())})")


def check_sealed(model: Path, kbs: str | None) -> None:
    from aruntime.engine.loader import SEALED_MANIFEST

    sealed = model.is_dir() and (model / SEALED_MANIFEST).is_file()
    if sealed and not kbs:
        raise UsageError(f"--model {model} is sealed: give --kbs URL, the broker of its key")
    if kbs and not sealed:
        raise UsageError(f"--kbs is for a sealed model, and {model} is not one")
