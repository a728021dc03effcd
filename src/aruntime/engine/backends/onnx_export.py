"""One ONNX file per part, exported by torch.onnx's dynamo exporter with a dynamic rows
dimension, cached under the data directory by a key over the model, the part, the dtype and
the exporter's version — ONNX Runtime, OpenVINO and IREE all start from it."""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from aruntime.engine.backends.base import (
    ROWS,
    BackendUnavailable,
    BoundWeights,
    Dynamic,
    package_version,
)

OPSET = 20


ONNX_PACKAGES = ("onnx", "onnxscript")  # what the export itself needs


def export(part: nn.Module, examples: tuple[torch.Tensor, ...], activations: Dynamic,
           cache_dir: Path, key: str) -> Path:
    """The part as an ONNX file (exported once, then read from the cache). `key` names the
    model, the part and the layer whose weights it binds; the shapes and the exporter's
    version are added here."""
    digest = hashlib.sha256(repr((key, [(tuple(e.shape), str(e.dtype)) for e in examples],
                                  activations, torch.__version__, package_version("onnxscript"),
                                  OPSET)).encode()).hexdigest()[:24]
    path = cache_dir / f"{key.split('/')[-1]}-{digest}.onnx"
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    dynamic = _dynamic_shapes(activations, len(examples))
    if isinstance(part, BoundWeights):  # its forward takes the activations as one *args
        dynamic = (dynamic,)
    tmp = path.with_suffix(".part.onnx")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(part, examples, str(tmp), dynamo=True, opset_version=OPSET,
                              dynamic_shapes=dynamic, verbose=False, external_data=False)
    except Exception as exc:  # an op the exporter cannot express: this backend cannot run it
        raise BackendUnavailable(f"torch.onnx cannot export {type(part).__name__}: "
                                 f"{type(exc).__name__}: {str(exc)[:200]}") from None
    tmp.replace(path)
    return path


def _dynamic_shapes(activations: Dynamic, count: int) -> tuple[object, ...]:
    """torch.export's dynamic shapes: one Dim per name, shared by the inputs that name it."""
    if isinstance(activations, int):
        activations = tuple({ROWS: "rows"} if i < activations else None for i in range(count))
    dims: dict[str, object] = {}
    return tuple(None if spec is None else {
        axis: dims.setdefault(name, torch.export.Dim(name, min=1, max=1 << 16))
        for axis, name in spec.items()} for spec in activations)
