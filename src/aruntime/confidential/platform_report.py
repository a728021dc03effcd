"""What a verified hardware report says, whatever the platform: the report data it signs, the
measurements and versions it carries, whether the guest can be debugged, and what the
appraisal of its signature chain could not settle (each a (claim, reason, AR4SI code))."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature


class ReportError(ValueError):
    """A hardware report that is malformed or whose signature chain does not verify."""


@dataclass(frozen=True)
class PlatformReport:
    attester: str  # "tdx" or "snp"
    report_data: bytes  # the 64 bytes the caller asked the platform to sign
    measurements: dict[str, str]  # e.g. "mrtd": "sha384:<hex>"
    debug: bool
    versions: dict[str, str] = field(default_factory=dict)
    findings: tuple[tuple[str, str, int], ...] = ()


def sha384(raw: bytes) -> str:
    return "sha384:" + raw.hex()


def load_pem_chain(pem: bytes) -> list[x509.Certificate]:
    with warnings.catch_warnings():  # AMD's ASKs carry serials RFC 5280 disallows
        warnings.simplefilter("ignore")
        return x509.load_pem_x509_certificates(pem)


def load_der(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x509.load_der_x509_certificate(der)


def check_issued(cert: x509.Certificate, issuer: x509.Certificate, now: datetime,
                 what: str) -> None:
    """`cert` is signed by `issuer` and valid at `now`; ReportError naming `what` else."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ReportError(f"the {what} is not signed by {issuer.subject.rfc4514_string()} "
                          f"({type(exc).__name__})") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ReportError(f"the {what} is not valid at {now:%Y-%m-%dT%H:%M:%SZ}")
