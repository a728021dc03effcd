"""Intel TDX quotes (DCAP, version 4, ECDSA-256): the TD report body — MRTD, RTMR0-3, MRSEAM,
TD attributes (bit 0: debug), the 64 bytes of report data — signed by the quoting enclave's
attestation key, which the QE report binds and the PCK certificate signs, up a chain that
must end at Intel's SGX Root CA (its key pinned here).

Not appraised here: the TCB level against Intel's PCS collateral (TCB info, QE identity,
CRLs), which needs the network; a verified quote is therefore a `warning` on `hardware`.
"""

from __future__ import annotations

import hashlib
import re
import struct
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from aruntime.confidential.platform_report import (
    PlatformReport,
    ReportError,
    check_issued,
    load_pem_chain,
    sha384,
)

HEADER, BODY = 48, 584
SIGNED = HEADER + BODY
TDX_TEE_TYPE, ECDSA_P256, QE_REPORT_CERT, PCK_CHAIN_CERT = 0x81, 2, 6, 5
# Intel SGX Root CA's public key (uncompressed P-256 point): the anchor of every PCK chain
INTEL_SGX_ROOT_KEY = bytes.fromhex(
    "040ba9c4c0c0c86193a3fe23d6b02cda10a8bbd4e88e48b4458561a36e705525f5"
    "67918e2edc88e40d860bd0cc4ee26aacc988e505a953558c453f6b0904ae7394")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
# (name, offset in the body, length): TDX 1.0's TD report
_FIELDS = (("tee_tcb_svn", 0, 16), ("mrseam", 16, 48), ("td_attributes", 120, 8),
           ("mrtd", 136, 48), ("rtmr0", 328, 48), ("rtmr1", 376, 48), ("rtmr2", 424, 48),
           ("rtmr3", 472, 48), ("report_data", 520, 64))


def _p256(raw: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)


def _verify(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes, what: str) -> None:
    der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                     int.from_bytes(sig[32:64], "big"))
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ReportError(f"the {what} signature does not verify") from None


def body_fields(quote: bytes) -> dict[str, bytes]:
    if len(quote) < SIGNED + 4:
        raise ReportError(f"a TDX quote is over {SIGNED} bytes; this one is {len(quote)}")
    version, key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    if (version, key_type, tee_type) != (4, ECDSA_P256, TDX_TEE_TYPE):
        raise ReportError(f"not a TDX v4 ECDSA-256 quote (version {version}, key type "
                          f"{key_type}, TEE type {tee_type:#x})")
    return {name: quote[HEADER + off:HEADER + off + n] for name, off, n in _FIELDS}


def _verify_quote(quote: bytes, now: datetime) -> PlatformReport:
    """The quote's claims, if its signature chain verifies to Intel's root; ReportError else."""
    fields = body_fields(quote)
    (sig_len,) = struct.unpack_from("<I", quote, SIGNED)
    sig = quote[SIGNED + 4:SIGNED + 4 + sig_len]
    if len(sig) != sig_len or sig_len < 134:
        raise ReportError("the quote's signature data is cut short")
    attest_key = sig[64:128]
    _verify(_p256(attest_key), sig[:64], quote[:SIGNED], "quote's attestation-key")
    cert_type, cert_len = struct.unpack_from("<HI", sig, 128)
    cert = sig[134:134 + cert_len]
    if cert_type != QE_REPORT_CERT or len(cert) < 450:
        raise ReportError(f"the quote's certification data is type {cert_type}, not a QE report")
    qe_report, qe_sig = cert[:384], cert[384:448]
    (auth_len,) = struct.unpack_from("<H", cert, 448)
    auth = cert[450:450 + auth_len]
    inner_type, _ = struct.unpack_from("<HI", cert, 450 + auth_len)
    chain = load_pem_chain(b"".join(_PEM.findall(cert[456 + auth_len:])))
    if inner_type != PCK_CHAIN_CERT or len(chain) != 3:
        raise ReportError("the quote carries no PCK certificate chain (leaf, platform CA, root)")
    pck, platform_ca, root = chain
    if qe_report[320:352] != hashlib.sha256(attest_key + auth).digest():
        raise ReportError("the QE report does not bind the quote's attestation key")
    pck_key = pck.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise ReportError("the PCK certificate's key is not ECDSA")
    _verify(pck_key, qe_sig, qe_report, "QE report's PCK")
    root_key = root.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
    if root_key != INTEL_SGX_ROOT_KEY:
        raise ReportError("the PCK chain does not end at Intel's SGX Root CA")
    check_issued(root, root, now, "Intel SGX Root CA")
    check_issued(platform_ca, root, now, "PCK platform CA certificate")
    check_issued(pck, platform_ca, now, "PCK certificate")
    measurements = {name: sha384(fields[name])
                    for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam")}
    return PlatformReport(
        "tdx", fields["report_data"], measurements, debug=bool(fields["td_attributes"][0] & 1),
        versions={"tdx.tee_tcb_svn": fields["tee_tcb_svn"].hex()},
        findings=(("hardware", "the TDX TCB level is not appraised (no Intel PCS collateral "
                   "here)", 32),))


def verify_quote(quote: bytes, now: datetime) -> PlatformReport:
    """The report's claims, verified; ReportError for anything malformed or unsigned."""
    try:
        return _verify_quote(quote, now)
    except ReportError:
        raise
    except (ValueError, struct.error) as exc:  # a point, a certificate, a length that is not one
        raise ReportError(f"the report is malformed: {exc}") from None
