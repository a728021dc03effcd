"""Reloading a policy bundle without a restart: a watcher that re-reads the bundle when its
bytes change and puts a valid new version in force with `CedarAuthorizer.replace`.

A bundle that is refused — its signature (missing where a key is trusted, bad, by another key,
over other bytes), a parse or schema error, unreadable files — changes nothing: the previous set
stays in force, one warning line says why (paths, versions and key ids only), and the failure is
counted (serve/metrics.py shows the counts and the version in force). The watcher compares the
files' digest and the signature file's bytes, not their times, so an edit within a clock tick
is seen too; each change is tried once, so a bad bundle is one log line, not one a second.

`check()` is the whole of one poll: tests call it directly; `start()` runs it on a thread every
`interval_s` (serve's lifespan starts and stops it).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aruntime.errors import first_line
from aruntime.policy.bundle import (
    PolicyBundle,
    bundle_digest,
    load_bundle,
    read_files,
    signature_path,
)
from aruntime.policy.bundle_signature import SignatureError
from aruntime.policy.cedar_authorizer import CedarAuthorizer, PolicyError
from aruntime.policy.decision import Mode

logger = logging.getLogger("aruntime.policy")


class Outcome(StrEnum):
    UNCHANGED = "unchanged"  # the same bytes, or a new signature over the same version
    RELOADED = "reloaded"  # a new version is in force
    REFUSED = "refused"  # a new version was refused; the previous one stays


def failure_reason(exc: PolicyError) -> str:
    return "signature" if isinstance(exc, SignatureError) else "policy"


class PolicyReloader:
    """Watches the bundle `bundle` was loaded from, for `authorizer` (which has it in force)."""

    def __init__(self, bundle: PolicyBundle, authorizer: CedarAuthorizer, *,
                 trusted: Ed25519PublicKey | None = None, interval_s: float = 1.0) -> None:
        self.path = bundle.path
        self.authorizer = authorizer
        self.trusted = trusted
        self.interval_s = interval_s
        self.bundle = bundle  # the bundle in force
        self.reloads = 0
        self.failures: Counter[str] = Counter()  # by reason: "signature" or "policy"
        self._seen = self._fingerprint()
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, path: Path, mode: Mode = Mode.ENFORCE, *,
             trusted: Ed25519PublicKey | None = None, interval_s: float = 1.0
             ) -> PolicyReloader:
        """Load the bundle at `path` (PolicyError when it is refused: serve does not start) and
        a watcher over it, with an authorizer that has it in force in `mode`."""
        bundle = load_bundle(path, trusted)
        authorizer = CedarAuthorizer(bundle.policy, mode)
        logger.info("policy %s", bundle.describe())
        return cls(bundle, authorizer, trusted=trusted, interval_s=interval_s)

    @property
    def failures_total(self) -> int:
        return sum(self.failures.values())

    def _fingerprint(self) -> tuple[str, bytes | None]:
        try:
            digest = bundle_digest(read_files(self.path))
        except PolicyError as exc:
            digest = f"unreadable: {exc}"
        try:
            sig: bytes | None = signature_path(self.path).read_bytes()
        except OSError:
            sig = None
        return digest, sig

    def check(self) -> Outcome:
        """One poll: if the bundle's bytes changed since the last poll, load it and put it in
        force, or refuse it (the previous set stays in force)."""
        with self._lock:
            seen = self._fingerprint()
            if seen == self._seen:
                return Outcome.UNCHANGED
            self._seen = seen
            try:
                bundle = load_bundle(self.path, self.trusted)
            except PolicyError as exc:
                self.failures[failure_reason(exc)] += 1
                logger.warning("policy bundle %s refused; version %s stays in force: %s",
                               self.path, self.authorizer.version, first_line(exc))
                return Outcome.REFUSED
            previous, self.bundle = self.bundle, bundle
            if bundle.version == previous.version:
                return Outcome.UNCHANGED
            self.authorizer.replace(bundle.policy)
            self.reloads += 1
        logger.info("policy reloaded (was %s): %s", previous.version, bundle.describe())
        with self._changed:
            self._changed.notify_all()
        return Outcome.RELOADED

    def wait_for(self, version: str, timeout: float) -> bool:
        """Block until `version` is in force (a reload by the thread), at most `timeout` s."""
        with self._changed:
            return self._changed.wait_for(lambda: self.authorizer.version == version, timeout)

    def start(self) -> None:
        """Poll every `interval_s` on a daemon thread until `stop()`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aruntime-policy-reloader",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the watcher die: the next poll tries again
                logger.exception("policy reloader: the check of %s failed", self.path)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
