"""Which arm of a rollout a request is on: a sticky hash of (rollout, tenant, session or request
id) into 10,000 buckets, the candidate's being the lowest `weight` percent of them — so one
conversation stays on one version, and a conversation on the candidate stays there as the
weight grows. A canonical digest, never Python's `hash()` (salted per process)."""

from __future__ import annotations

import hashlib

from aruntime.contracts.base import canonical_json

BUCKETS = 10_000


def bucket(rollout_id: str, tenant: str, session: str) -> int:
    digest = hashlib.sha256(canonical_json([rollout_id, tenant, session])).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def on_candidate(rollout_id: str, tenant: str, session: str, weight_percent: float) -> bool:
    return bucket(rollout_id, tenant, session) < round(weight_percent * BUCKETS / 100)
