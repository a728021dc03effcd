"""Per-tenant quotas: requests per minute, tokens per minute and concurrent requests, so one
tenant's flood cannot starve another's admission (LiteLLM's virtual-key rpm/tpm limits).

Token buckets, one pair per tenant: a bucket holds up to a minute's allowance and refills
continuously, so a tenant may burst up to its limit and then goes at the limit's rate — no
window edge where twice the limit passes, as a fixed window allows. A request takes its
estimated tokens (prompt + max_tokens) up front; when it ends its lease settles on what it really
used and the unused part goes back. The concurrency cap counts leases not yet released.
Thread-safe; the clock is injectable, so tests never sleep.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

TENANTS_KEPT = 10_000  # tenants tracked before idle ones are forgotten


@dataclass(frozen=True, slots=True)
class Limits:
    """None: unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer (or unset)")

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.max_concurrent is None


class QuotaExceeded(Exception):
    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason  # "rpm", "tpm" or "concurrency"
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class _Bucket:
    capacity: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.capacity / 60.0)
        self.at = now

    def wait_s(self, amount: float) -> int:
        """Seconds until `amount` is there (at least 1: Retry-After is whole seconds)."""
        return max(1, math.ceil((amount - self.level) * 60.0 / self.capacity))


@dataclass(slots=True)
class _Tenant:
    requests: _Bucket | None
    tokens: _Bucket | None
    running: int = 0

    def refill(self, now: float) -> None:
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)

    @property
    def idle(self) -> bool:
        """In the state a new tenant starts in: nothing in flight, every bucket full."""
        return self.running == 0 and all(b is None or b.level >= b.capacity
                                         for b in (self.requests, self.tokens))


@dataclass(slots=True)
class Lease:
    """One admitted request's hold on its tenant's quota; `release` exactly once."""

    quotas: Quotas | None
    tenant: str
    tokens: int
    _released: bool = field(default=False)

    def release(self, used_tokens: int | None = None) -> None:
        if self._released or self.quotas is None:
            return
        self._released = True
        self.quotas._release(self, self.tokens if used_tokens is None else used_tokens)


class Quotas:
    def __init__(self, default: Limits | None = None,
                 overrides: Mapping[str, Limits] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.default = default or Limits()
        self.overrides = dict(overrides or {})
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._prune_at = TENANTS_KEPT

    def limits(self, tenant: str) -> Limits:
        return self.overrides.get(tenant, self.default)

    def acquire(self, tenant: str, estimated_tokens: int) -> Lease:
        """A lease for one request, or QuotaExceeded saying which limit and when to retry."""
        limits = self.limits(tenant)
        if limits.unlimited:
            return Lease(None, tenant, 0)
        with self._lock:
            now = self._clock()
            t = self._tenant(tenant, limits, now)
            if limits.max_concurrent is not None and t.running >= limits.max_concurrent:
                raise QuotaExceeded("concurrency", f"tenant '{tenant}' has "
                                    f"{t.running} requests in flight, its limit", 1)
            # a request larger than a minute's allowance waits for a full bucket, not forever
            tokens = min(estimated_tokens, limits.tpm) if limits.tpm else estimated_tokens
            if t.requests is not None and t.requests.level < 1:
                raise QuotaExceeded("rpm", f"tenant '{tenant}' is over {limits.rpm} requests "
                                    "per minute", t.requests.wait_s(1))
            if t.tokens is not None and t.tokens.level < tokens:
                raise QuotaExceeded("tpm", f"tenant '{tenant}' is over {limits.tpm} tokens "
                                    "per minute", t.tokens.wait_s(tokens))
            if t.requests is not None:
                t.requests.level -= 1
            if t.tokens is not None:
                t.tokens.level -= tokens
            t.running += 1
            return Lease(self, tenant, tokens)

    def running(self, tenant: str) -> int:
        with self._lock:
            t = self._tenants.get(tenant)
            return t.running if t else 0

    def wait_running(self, tenant: str, at_most: int, timeout: float) -> bool:
        """Block until the tenant has at most `at_most` requests in flight (a drain, or a test
        waiting for a closed stream's lease); False if `timeout` passed first."""
        with self._released:
            return self._released.wait_for(
                lambda: (t := self._tenants.get(tenant)) is None or t.running <= at_most,
                timeout)

    def _tenant(self, tenant: str, limits: Limits, now: float) -> _Tenant:
        t = self._tenants.get(tenant)
        if t is None and len(self._tenants) >= self._prune_at:
            self._forget_idle(now)
        if t is None:
            t = self._tenants[tenant] = _Tenant(
                _Bucket(limits.rpm, limits.rpm, now) if limits.rpm else None,
                _Bucket(limits.tpm, limits.tpm, now) if limits.tpm else None)
        t.refill(now)
        return t

    def _forget_idle(self, now: float) -> None:
        """Drop idle tenants: a server open to any tenant name keeps bounded memory, and
        nobody gains by it (an idle tenant is in the state a new one starts in)."""
        for name, t in list(self._tenants.items()):
            t.refill(now)
            if t.idle:
                del self._tenants[name]
        self._prune_at = max(TENANTS_KEPT, 2 * len(self._tenants))

    def _release(self, lease: Lease, used: int) -> None:
        with self._lock:
            t = self._tenants.get(lease.tenant)
            if t is None:
                return
            t.running = max(0, t.running - 1)
            self._released.notify_all()
            if t.tokens is not None and used < lease.tokens:  # give back what was not used
                t.tokens.refill(self._clock())
                t.tokens.level = min(t.tokens.capacity, t.tokens.level + lease.tokens - used)
            elif t.tokens is not None and used > lease.tokens:  # went over its estimate
                t.tokens.level -= used - lease.tokens
