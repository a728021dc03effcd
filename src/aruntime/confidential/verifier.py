"""The verifier (RFC 9334's): it issues nonces, appraises evidence against an appraisal policy
and signs the result as an EAR. A nonce is good once, for `nonce_ttl_s`: evidence that answers
a nonce it never issued, or one already used, is contraindicated.

The trustworthiness vector follows AR4SI's claims and codes (2 affirming, 32 warning, 96
contraindicated, 0 no claim): `instance-identity` (the evidence's signature and its nonce),
`hardware` (the attester type: 0 for the software attester, which claims no hardware),
`executables` (the package and model measurements), `configuration` (config, debug, versions),
`runtime-opaque` (the bound key: secrets released to it stay in the boundary only on hardware).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from aruntime.confidential.appraisal import AppraisalPolicy, version_tuple
from aruntime.confidential.ear import AFFIRMING, CONTRAINDICATED, WARNING, Ear, sign_ear
from aruntime.confidential.evidence import SOFTWARE, Evidence, report_data, unb64
from aruntime.confidential.platform_report import PlatformReport, ReportError
from aruntime.confidential.snp_report import verify_report
from aruntime.confidential.tdx_quote import verify_quote
from aruntime.evidence.signing import DeploymentKey, SigningError, load_public_key, verify_signature

OK, WARN, BAD, NONE = 2, 32, 96, 0


class UnknownPolicyError(KeyError):
    """No appraisal policy of that id."""


class Verifier:
    def __init__(self, key: DeploymentKey, policies: Mapping[str, AppraisalPolicy], *,
                 nonce_ttl_s: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.policies = dict(policies)
        self.nonce_ttl_s = nonce_ttl_s
        self._clock = clock
        self._nonces: dict[str, float] = {}  # issued, not yet used -> when
        self._lock = threading.Lock()

    def challenge(self) -> str:
        nonce = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._nonces = {n: t for n, t in self._nonces.items()
                            if now - t < self.nonce_ttl_s}
            self._nonces[nonce] = now
        return nonce

    def appraise(self, evidence: Evidence, policy_id: str,
                 expected_key_hash: str | None = None) -> tuple[Ear, str]:
        """The result and its signed token. `expected_key_hash`: the key a relying party will
        encrypt to (background-check model); the passport model leaves it to the client."""
        policy = self.policies.get(policy_id)
        if policy is None:
            raise UnknownPolicyError(f"no appraisal policy {policy_id!r}")
        vector, reasons = {"instance-identity": OK, "hardware": OK, "executables": OK,
                           "configuration": OK, "runtime-opaque": OK}, []

        def fail(claim: str, why: str, code: int = BAD) -> None:
            vector[claim] = max(vector[claim], code)
            reasons.append(why)

        measured, debug, versions = self._identity(evidence, fail)
        self._hardware(evidence, policy, vector, fail)
        self._executables(measured, policy, fail)
        self._configuration(debug, versions, policy, fail)
        if expected_key_hash is not None and evidence.key_hash != expected_key_hash:
            fail("runtime-opaque", "the evidence binds another key than the one offered")
        worst = max(vector.values())
        status = CONTRAINDICATED if worst >= BAD else WARNING if worst >= WARN else AFFIRMING
        ear = Ear(status, vector, policy_id, evidence.nonce, evidence.key_hash,
                  evidence.attester, tuple(reasons), int(self._clock()))
        return ear, sign_ear(ear, self.key)

    def _identity(self, evidence: Evidence, fail: Callable[..., None],
                  ) -> tuple[dict[str, str], bool, dict[str, str]]:
        """The nonce is fresh and the evidence is the attester's; what it shows (measurements,
        debug, versions) — a hardware report's own values over anything claimed beside it."""
        with self._lock:
            issued = self._nonces.pop(evidence.nonce, None)
        if issued is None or self._clock() - issued >= self.nonce_ttl_s:
            fail("instance-identity", "the evidence answers a nonce this verifier did not "
                 "issue, or one already used (a replay)")
        shown = dict(evidence.measurements), evidence.debug, dict(evidence.versions)
        if evidence.attester == SOFTWARE:
            try:
                signer = load_public_key(evidence.signer)
            except (SigningError, ValueError):
                fail("instance-identity", "the software evidence carries no readable key")
                return shown
            if not verify_signature(signer, evidence.signed_bytes(), evidence.signature):
                fail("instance-identity", "the evidence's signature does not verify")
            return shown
        try:
            platform = _platform_report(evidence, datetime.fromtimestamp(self._clock(), UTC))
        except ReportError as exc:
            fail("instance-identity", f"the {evidence.attester} report does not verify: {exc}")
            return shown
        for claim, why, code in platform.findings:
            fail(claim, why, code)
        if platform.report_data != report_data(evidence.nonce, evidence.key_hash,
                                               evidence.measurements):
            fail("instance-identity", f"the {evidence.attester} report's data does not bind "
                 "this nonce, key and measurements")
        return ({**shown[0], **platform.measurements}, evidence.debug or platform.debug,
                {**shown[2], **platform.versions})

    def _hardware(self, evidence: Evidence, policy: AppraisalPolicy,
                  vector: dict[str, int], fail: Callable[[str, str], None]) -> None:
        accepted = ", ".join(sorted(policy.accepted_attesters))
        if evidence.attester not in policy.accepted_attesters:
            fail("hardware", f"the {evidence.attester} attester is not accepted by policy "
                 f"{policy.policy_id!r} (it accepts {accepted})")
        elif evidence.attester == SOFTWARE:
            vector["hardware"] = NONE  # accepted, explicitly, as no hardware at all
        age = self._clock() - evidence.issued_at
        if age > policy.max_age_s or age < -60:
            fail("instance-identity", f"the evidence is {int(age)} s old (policy allows "
                 f"{policy.max_age_s} s)")

    @staticmethod
    def _executables(measured: Mapping[str, str], policy: AppraisalPolicy,
                     fail: Callable[[str, str], None]) -> None:
        for name, accepted in sorted(policy.reference_values.items()):
            if measured.get(name) not in accepted:
                fail("executables", f"measurement {name} is not a reference value of policy "
                     f"{policy.policy_id!r}")

    @staticmethod
    def _configuration(debug: bool, versions: Mapping[str, str], policy: AppraisalPolicy,
                       fail: Callable[[str, str], None]) -> None:
        if debug and not policy.allow_debug:
            fail("configuration", "the boundary runs with debugging on")
        for name, minimum in sorted(policy.min_versions.items()):
            have = versions.get(name)
            if have is None or version_tuple(have) < version_tuple(minimum):
                fail("configuration", f"{name} {have or 'unknown'} is below {minimum}")


def _platform_report(evidence: Evidence, now: datetime) -> PlatformReport:
    """The hardware report's claims, verified by its platform's appraiser."""
    try:
        raw, certs = unb64(evidence.report), unb64(evidence.certs)
    except ValueError:
        raise ReportError("the report is not base64url") from None
    if evidence.attester == "tdx":
        return verify_quote(raw, now)
    if evidence.attester == "snp":
        return verify_report(raw, certs, now)
    raise ReportError(f"no appraiser for {evidence.attester} reports here (NVIDIA's is its "
                      "SDK's: the nvidia-gpu extra)")
