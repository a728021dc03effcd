"""The boundary's side of sealed weights: attest to the key broker, get the data key released
to a key of this process (RCAR), and open the weights in memory — the plaintext is never
written anywhere, and the released key lives only as long as the opening does."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aruntime.confidential.attester import boundary_attester
from aruntime.confidential.kbs_client import RcarError, fetch_resource
from aruntime.confidential.sealed_weights import Manifest, SealedModelError, open_file
from aruntime.confidential.sealing import SealError
from aruntime.engine.loader import Checkpoint, CheckpointError
from aruntime.evidence.signing import DeploymentKey

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def released_weights(checkpoint: Checkpoint, kbs_url: str | None) -> dict[str, torch.Tensor]:
    """The sealed checkpoint's tensors; CheckpointError saying why when the broker releases no
    key, or the key does not open them."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    manifest: Manifest = checkpoint.reader
    if not kbs_url:
        raise CheckpointError(f"{checkpoint.path} is sealed: serve it with --kbs URL, the key "
                              f"broker holding {manifest.resource}")
    attester = boundary_attester(DeploymentKey.generate(), model_revision=checkpoint.revision,
                                 config={"role": "engine"})
    try:
        release = fetch_resource(kbs_url, manifest.resource, attester)
    except (RcarError, SealError, OSError) as exc:
        raise CheckpointError(f"the key broker at {kbs_url} released no key for "
                              f"{manifest.resource}: {exc}") from None
    logger.info("the key broker released %s to this %s boundary (its transparency log, "
                "leaf %d)", manifest.resource, attester.type, release.log_index)
    key = release.data
    out: dict[str, torch.Tensor] = {}
    try:
        for i, (entry, path) in enumerate(zip(manifest.files, checkpoint.weight_files,
                                              strict=True)):
            plain = open_file(path.read_bytes(), entry, key, i, manifest.chunk_bytes)
            out.update(load(bytes(plain)))
            plain[:] = b""  # the buffer goes now, not when the collector gets to it
    except (SealedModelError, SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint.path}: {exc}") from None
    finally:
        del key
    return out
