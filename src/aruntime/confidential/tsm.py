"""Hardware attesters through Linux configfs-tsm (`/sys/kernel/config/tsm/report`), one
interface for Intel TDX and AMD SEV-SNP guests: make an entry, write 64 bytes of report data to
its `inblob`, read the platform-signed report from `outblob` (a TDX quote, or an SNP report
with the host's certificate table in `auxblob`) and which `provider` made it.

The report data is `evidence.report_data(nonce, key_hash, measurements)`: the platform signs
the nonce, the key that will receive secrets, and what software measured in the guest.
"""

from __future__ import annotations

import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aruntime.confidential.attester import (
    TSM_REPORT_DIR,
    Attester,
    guest_measurements,
    software_versions,
)
from aruntime.confidential.evidence import Evidence, b64, report_data

PROVIDERS = {"tdx_guest": "tdx", "sev_guest": "snp"}


class TsmError(RuntimeError):
    """configfs-tsm did not produce a report (absent, busy, or another provider)."""


@dataclass(frozen=True)
class TsmReport:
    provider: str  # "tdx_guest" or "sev_guest"
    outblob: bytes  # the platform's signed report
    auxblob: bytes = b""  # SNP: the host's certificate table (VCEK, ASK, ARK)


class TsmSource(ABC):
    """Where reports come from: the kernel's configfs-tsm, or a recorded one in tests."""

    @abstractmethod
    def report(self, inblob: bytes) -> TsmReport: ...


class ConfigfsTsm(TsmSource):
    def __init__(self, root: Path = TSM_REPORT_DIR) -> None:
        self.root = root

    def report(self, inblob: bytes) -> TsmReport:
        entry = self.root / f"aruntime-{secrets.token_hex(8)}"
        try:
            entry.mkdir()  # the kernel fills it with its attribute files
        except OSError as exc:
            raise TsmError(f"cannot open a configfs-tsm report at {self.root}: {exc}") from None
        try:
            (entry / "inblob").write_bytes(inblob)
            generation = (entry / "generation").read_text().strip()
            out = TsmReport((entry / "provider").read_text().strip(),
                            (entry / "outblob").read_bytes(),
                            (entry / "auxblob").read_bytes()
                            if (entry / "auxblob").is_file() else b"")
            if (entry / "generation").read_text().strip() != generation:
                raise TsmError("another writer changed the report while it was read")
            return out
        except OSError as exc:
            raise TsmError(f"configfs-tsm gave no report: {exc}") from None
        finally:
            entry.rmdir()  # configfs entries go with rmdir, attribute files and all


class TsmAttester(Attester):
    """TDX or SNP, whichever provider the source's reports come from."""

    def __init__(self, *, model_revision: str, config: Mapping[str, object] | None = None,
                 source: TsmSource | None = None) -> None:
        self.source = source or ConfigfsTsm()
        self.measurements = guest_measurements(model_revision, config)
        provider = self.source.report(bytes(64)).provider
        if provider not in PROVIDERS:
            raise TsmError(f"configfs-tsm provider {provider!r} is not TDX or SNP")
        self.type = PROVIDERS[provider]

    def attest(self, nonce: str, key_hash: str) -> Evidence:
        got = self.source.report(report_data(nonce, key_hash, self.measurements))
        return Evidence(self.type, nonce, key_hash, self.measurements,
                        versions=software_versions(),
                        issued_at=int(time.time()), report=b64(got.outblob),
                        certs=b64(got.auxblob))
