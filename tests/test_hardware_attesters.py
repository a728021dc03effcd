"""The TDX and SNP attesters and their appraisal, on reports recorded on real TEEs (this machine
has none; tests/data/recorded/README.md says where they come from): a recorded quote verifies
up to Intel's root and a recorded report up to AMD's ARK, one flipped byte breaks either, and
their report data — chosen by whoever recorded them — rightly binds no nonce of ours, so the
verifier contraindicates them and the key broker releases nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aruntime.confidential.appraisal import AppraisalPolicy
from aruntime.confidential.attester import available_hardware
from aruntime.confidential.ear import CONTRAINDICATED
from aruntime.confidential.evidence import key_hash, report_data
from aruntime.confidential.gpu import GpuAttestationUnavailable, NvidiaGpuAttester
from aruntime.confidential.kbs import kbs_app
from aruntime.confidential.kbs_client import RcarError, fetch_resource
from aruntime.confidential.platform_report import ReportError
from aruntime.confidential.snp_report import VCEK_GUID, build_cert_table, verify_report
from aruntime.confidential.tdx_quote import verify_quote
from aruntime.confidential.tsm import TsmAttester, TsmReport, TsmSource
from aruntime.confidential.verifier import Verifier
from aruntime.evidence.signing import DeploymentKey
from aruntime.serve.launch import BackgroundServer

RECORDED = Path(__file__).parent / "data" / "recorded"
QUOTE = (RECORDED / "tdx_quote_4.dat").read_bytes()
SNP = (RECORDED / "test-report.bin").read_bytes()
VCEK = (RECORDED / "test-vcek.der").read_bytes()
WHEN = datetime(2025, 6, 1, tzinfo=UTC)  # inside the recorded certificates' validity
MODEL = "sha256:" + "cd" * 32


class RecordedTsm(TsmSource):
    """A test double for the kernel's configfs-tsm (outside our reach: no TEE here) that answers
    a report recorded on real hardware, and keeps the report data it was asked to sign."""

    def __init__(self, provider: str, outblob: bytes, auxblob: bytes = b"") -> None:
        self.recorded = TsmReport(provider, outblob, auxblob)
        self.asked: list[bytes] = []

    def report(self, inblob: bytes) -> TsmReport:
        self.asked.append(inblob)
        return self.recorded


def flipped(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 1
    return bytes(out)


def test_a_recorded_tdx_quote_verifies_to_intels_root() -> None:
    got = verify_quote(QUOTE, WHEN)
    expected = json.loads((RECORDED / "parse_tdx_claims_expected.json").read_text())
    body = expected["quote"]["body"]
    for ours, theirs in (("mrtd", "mr_td"), ("rtmr0", "rtmr_0"), ("rtmr3", "rtmr_3"),
                         ("mrseam", "mr_seam")):
        assert got.measurements[ours] == "sha384:" + body[theirs]
    assert got.report_data.hex() == body["report_data"]
    assert got.debug  # the recorded TD was a debug one
    assert [f[0] for f in got.findings] == ["hardware"]  # its TCB level is not appraised here
    for at, why in ((200, "attestation-key"), (680, "attestation-key"), (1000, "QE report"),
                    (1500, "")):
        with pytest.raises(ReportError, match=why or None):
            verify_quote(flipped(QUOTE, at), WHEN)
    with pytest.raises(ReportError, match="not valid"):
        verify_quote(QUOTE, datetime(2031, 1, 1, tzinfo=UTC))  # past its PCK certificate
    with pytest.raises(ReportError, match="TDX v4"):
        verify_quote(SNP + bytes(100), WHEN)


def test_a_recorded_snp_report_verifies_to_amds_ark() -> None:
    table = build_cert_table({VCEK_GUID: VCEK})
    got = verify_report(SNP, table, WHEN)
    assert got.attester == "snp" and not got.debug
    assert got.measurements["measurement"].startswith("sha384:a1f3930413247bb3")
    assert got.versions["snp.generation"] == "Milan"
    for at in (0x90, 0x50, 0x2A0 + 3):  # measurement, report data, signature
        with pytest.raises(ReportError, match="signature"):
            verify_report(flipped(SNP, at), table, WHEN)
    with pytest.raises(ReportError, match="no VCEK"):
        verify_report(SNP, build_cert_table({}), WHEN)
    with pytest.raises(ReportError):
        verify_report(SNP, build_cert_table({VCEK_GUID: flipped(VCEK, 600)}), WHEN)
    with pytest.raises(ReportError, match="1184"):
        verify_report(SNP[:-1], table, WHEN)


@pytest.mark.parametrize(("provider", "outblob", "aux", "attester"), [
    ("tdx_guest", QUOTE, b"", "tdx"),
    ("sev_guest", SNP, build_cert_table({VCEK_GUID: VCEK}), "snp"),
])
def test_the_tsm_attester_binds_nonce_and_key_and_recorded_reports_release_nothing(
        provider: str, outblob: bytes, aux: bytes, attester: str, tmp_path: Path) -> None:
    source = RecordedTsm(provider, outblob, aux)
    tsm = TsmAttester(model_revision=MODEL, source=source)
    assert tsm.type == attester
    evidence = tsm.attest("nonce-1", key_hash(b"k" * 32))
    assert source.asked[-1] == report_data("nonce-1", key_hash(b"k" * 32), tsm.measurements)
    policy = AppraisalPolicy.from_json({"policy_id": "hw", "accepted_attesters": ["tdx", "snp"],
                                        "max_age_s": 10**10})
    verifier = Verifier(DeploymentKey.generate(), {"hw": policy},
                        clock=lambda: WHEN.timestamp())
    nonce = verifier.challenge()
    ear, _ = verifier.appraise(tsm.attest(nonce, key_hash(b"k" * 32)), "hw")
    assert ear.status == CONTRAINDICATED and ear.attester == attester
    assert any("does not bind" in r for r in ear.reasons), ear.reasons
    assert not any("does not verify" in r for r in ear.reasons), ear.reasons  # the chain holds
    assert any("debugging" in r for r in ear.reasons) == (attester == "tdx")
    assert evidence.attester == attester
    res = tmp_path / "res" / "models" / "key"
    res.mkdir(parents=True)
    (res / "m").write_bytes(b"secret")
    with BackgroundServer(kbs_app(verifier, "hw", tmp_path / "res")) as kbs, \
            pytest.raises(RcarError, match="403"):
        fetch_resource(kbs.url, "models/key/m", tsm)


def test_no_gpu_attester_without_nvidias_sdk() -> None:
    assert available_hardware() == []  # this machine: no configfs-tsm, no SDK
    with pytest.raises(GpuAttestationUnavailable, match="nvidia-gpu"):
        NvidiaGpuAttester(model_revision=MODEL)
