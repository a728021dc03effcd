"""The boundary's side of sealed weights: attest to the key broker, get the data key released
to a key of this process (RCAR), and open the weight files in memory — the plaintext is never
written anywhere, and the released key lives only as long as the opening does."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from aruntime.confidential.attester import boundary_attester
from aruntime.confidential.kbs_client import RcarError, fetch_resource
from aruntime.confidential.sealed_weights import Manifest, SealedModelError, open_file
from aruntime.confidential.sealing import SealError
from aruntime.evidence.signing import DeploymentKey

logger = logging.getLogger(__name__)


class ReleaseError(ValueError):
    """No key was released for a sealed model, or it does not open the weights; says why."""


def released_files(manifest: Manifest, sealed: tuple[Path, ...], revision: str,
                   kbs_url: str | None) -> Iterator[bytearray]:
    """Each sealed weight file's plaintext, in memory, in the manifest's order. The caller
    clears each buffer once it has read it."""
    if not kbs_url:
        raise ReleaseError(f"the model is sealed: serve it with --kbs URL, the key broker "
                           f"holding {manifest.resource}")
    attester = boundary_attester(DeploymentKey.generate(), model_revision=revision,
                                 config={"role": "engine"})
    try:
        release = fetch_resource(kbs_url, manifest.resource, attester)
    except (RcarError, SealError) as exc:
        raise ReleaseError(f"the key broker at {kbs_url} released no key for "
                           f"{manifest.resource}: {exc}") from None
    logger.info("the key broker released %s to this %s boundary (its transparency log, "
                "leaf %d)", manifest.resource, attester.type, release.log_index)
    key = release.data
    try:
        for i, (entry, path) in enumerate(zip(manifest.files, sealed, strict=True)):
            yield open_file(path.read_bytes(), entry, key, i, manifest.chunk_bytes)
    except (SealedModelError, OSError) as exc:
        raise ReleaseError(str(exc)) from None
    finally:
        del key, release
