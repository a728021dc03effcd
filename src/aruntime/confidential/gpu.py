"""The GPU slot: NVIDIA confidential-computing evidence (Hopper and later) through NVIDIA's
attestation SDK, an optional extra (`aruntime[nvidia-gpu]`): its own pins clash with the core's,
so it is never imported unless a GPU attester is asked for. The GPU signs a 32-byte nonce;
ours is the first half of `report_data`, so the GPU report binds the same nonce, key and
measurements as a CPU one.

Appraising GPU evidence is NVIDIA's verifier's part (local, or NRAS); this verifier has no
appraiser for it and calls such evidence contraindicated, so nothing releases on it alone.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Mapping
from typing import Any

from aruntime.confidential.attester import Attester, guest_measurements, software_versions
from aruntime.confidential.evidence import Evidence, b64, report_data

SDK = "nv_attestation_sdk"
EXTRA_HINT = "install aruntime[nvidia-gpu] (NVIDIA's attestation SDK) on a CC-mode GPU"


class GpuAttestationUnavailable(RuntimeError):
    """No NVIDIA attestation SDK here (or no GPU it can attest)."""


def sdk_present() -> bool:
    return importlib.util.find_spec(SDK) is not None


class NvidiaGpuAttester(Attester):
    type = "nvidia-gpu"

    def __init__(self, *, model_revision: str, config: Mapping[str, object] | None = None) -> None:
        if not sdk_present():
            raise GpuAttestationUnavailable(f"no GPU attester: {EXTRA_HINT}")
        self.measurements = guest_measurements(model_revision, config)

    def attest(self, nonce: str, key_hash: str) -> Evidence:
        from nv_attestation_sdk.attestation import (
            Attestation,
            Devices,
            Environment,
        )

        client: Any = Attestation()
        client.add_verifier(Devices.GPU, Environment.LOCAL, "", "")
        client.set_nonce(report_data(nonce, key_hash, self.measurements)[:32].hex())
        evidence = client.get_evidence()
        return Evidence(self.type, nonce, key_hash, self.measurements,
                        versions=software_versions(),
                        issued_at=int(time.time()), report=b64(json.dumps(evidence).encode()))
