"""AMD SEV-SNP attestation reports (1184 bytes, ECDSA P-384): the launch measurement, host
data, guest policy (bit 19: debug), the reported TCB and 64 bytes of report data, signed by
the chip's VCEK — which the host hands over in configfs-tsm's certificate table — whose chain
runs to AMD's ARK for the processor generation (AMD's ARK and ASK certificates ship in
`roots/`). The reported TCB must be the one the VCEK was issued for.
"""

from __future__ import annotations

import struct
import uuid
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from aruntime.confidential.platform_report import (
    PlatformReport,
    ReportError,
    check_issued,
    load_der,
    load_pem_chain,
    sha384,
)

REPORT_BYTES, SIGNED, SIG_AT = 0x4A0, 0x2A0, 0x2A0
DEBUG_POLICY_BIT = 1 << 19
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GENERATIONS = ("Milan", "Genoa", "Turin")
_TCB_OID = "1.3.6.1.4.1.3704.1.3."  # .1 bootloader, .2 tee, .3 snp, .8 microcode, .9 fmc
# where each TCB part sits in the 8-byte reported TCB (Turin moved them for its FMC)
_TCB_BYTES = {"Turin": {"9": 0, "1": 1, "2": 2, "3": 3, "8": 7},
              None: {"1": 0, "2": 1, "3": 6, "8": 7}}


def cert_table(aux: bytes) -> dict[uuid.UUID, bytes]:
    """The host's certificate table (GHCB's): 24-byte entries (GUID, offset, length) up to an
    all-zero one, each pointing into the same buffer."""
    out: dict[uuid.UUID, bytes] = {}
    at = 0
    while at + 24 <= len(aux):
        guid, offset, length = aux[at:at + 16], *struct.unpack_from("<II", aux, at + 16)
        if guid == bytes(16):
            return out
        if offset + length > len(aux):
            raise ReportError("the certificate table points past its end")
        out[uuid.UUID(bytes=guid)] = aux[offset:offset + length]
        at += 24
    raise ReportError("the certificate table has no terminating entry")


def build_cert_table(certs: dict[uuid.UUID, bytes]) -> bytes:
    """The table `cert_table` reads, as a host would lay it out."""
    head = 24 * (len(certs) + 1)
    entries, blobs = b"", b""
    for guid, der in certs.items():
        entries += guid.bytes + struct.pack("<II", head + len(blobs), len(der))
        blobs += der
    return entries + bytes(24) + blobs


def _amd_chain(vcek: x509.Certificate, now: datetime) -> str:
    """The processor generation whose ASK issued `vcek`, its chain checked to the ARK."""
    issuer = vcek.issuer.rfc4514_string()
    for gen in GENERATIONS:
        pem = resources.files("aruntime.confidential").joinpath(f"roots/amd-{gen.lower()}.pem")
        certs = {c.subject.rfc4514_string(): c for c in load_pem_chain(pem.read_bytes())}
        ask = certs.get(issuer)
        ark = next((c for name, c in certs.items() if f"CN=ARK-{gen}" in name), None)
        if ask is not None and ark is not None:
            check_issued(ark, ark, now, f"ARK-{gen}")
            check_issued(ask, ark, now, f"ASK of {gen}")
            check_issued(vcek, ask, now, "VCEK")
            return gen
    raise ReportError(f"the VCEK's issuer {issuer} is none of AMD's ASKs")


def _check_tcb(report: bytes, vcek: x509.Certificate, gen: str) -> None:
    """Each TCB part the VCEK names (a one-byte DER INTEGER) equals the report's."""
    reported, places = report[0x180:0x188], _TCB_BYTES.get(gen, _TCB_BYTES[None])
    for ext in vcek.extensions:
        oid, raw = ext.oid.dotted_string, getattr(ext.value, "value", b"")
        at = places.get(oid.removeprefix(_TCB_OID)) if oid.startswith(_TCB_OID) else None
        if at is not None and raw[:2] == b"\x02\x01" and raw[2] != reported[at]:
            raise ReportError("the report's TCB is not the one its VCEK was issued for")


def _verify_report(report: bytes, aux: bytes, now: datetime) -> PlatformReport:
    """The report's claims, if the VCEK signs it and chains to AMD; ReportError else."""
    if len(report) != REPORT_BYTES:
        raise ReportError(f"an SNP report is {REPORT_BYTES} bytes; this one is {len(report)}")
    version, _, policy = struct.unpack_from("<IIQ", report, 0)
    (sig_algo,) = struct.unpack_from("<I", report, 0x34)
    (flags,) = struct.unpack_from("<I", report, 0x48)
    if version < 2 or sig_algo != 1 or (flags >> 2) & 7 != 0:
        raise ReportError(f"not a VCEK-signed ECDSA P-384 SNP report (version {version}, "
                          f"algorithm {sig_algo}, signing key {(flags >> 2) & 7})")
    der = cert_table(aux).get(VCEK_GUID)
    if der is None:
        raise ReportError("the evidence carries no VCEK (the host's certificate table)")
    vcek = load_der(der)
    gen = _amd_chain(vcek, now)
    r = int.from_bytes(report[SIG_AT:SIG_AT + 72], "little")
    s = int.from_bytes(report[SIG_AT + 72:SIG_AT + 144], "little")
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ReportError("the VCEK's key is not ECDSA")
    try:
        key.verify(utils.encode_dss_signature(r, s), report[:SIGNED], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise ReportError("the SNP report's VCEK signature does not verify") from None
    _check_tcb(report, vcek, gen)
    return PlatformReport(
        "snp", report[0x50:0x90],
        {"measurement": sha384(report[0x90:0xC0]), "host_data": report[0xC0:0xE0].hex()},
        debug=bool(policy & DEBUG_POLICY_BIT),
        versions={"snp.reported_tcb": report[0x180:0x188].hex(), "snp.generation": gen})


def verify_report(report: bytes, aux: bytes, now: datetime) -> PlatformReport:
    """The report's claims, verified; ReportError for anything malformed or unsigned."""
    try:
        return _verify_report(report, aux, now)
    except ReportError:
        raise
    except (ValueError, struct.error) as exc:  # a point, a certificate, a length that is not one
        raise ReportError(f"the report is malformed: {exc}") from None
