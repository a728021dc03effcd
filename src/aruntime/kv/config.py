"""What a deployment asks of the KV cache beyond the device: tiers, the transport between
disaggregated workers, and the events a cache directory follows. One frozen value, checked once;
`aruntime serve`'s --kv-* flags fill it."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class KVConfig:
    host_bytes: int = 0  # host RAM for blocks written through from the device
    disk_dir: str | None = None  # local directory for blocks demoted from host RAM
    disk_bytes: int = 0
    redis_url: str | None = None  # a Redis server shared by workers and machines
    transport_dir: str | None = None  # disaggregated workers on one machine hand KV over here
    transport_bytes: int = GIB  # what each worker may keep in the transport
    staged: bool = False  # a transport outside the engine (Ray's object store) hands blocks in
    events: bool = False  # collect BlockStored/BlockRemoved events for a cache directory
    events_endpoint: str | None = None  # publish them there (ZeroMQ PUB bind); implies events
    events_replay_endpoint: str | None = None  # a late directory replays from here (ROUTER bind)
    lease_s: float = 10.0  # a directory drops our blocks when it hears nothing for this long

    def __post_init__(self) -> None:
        if self.disk_dir and self.disk_bytes <= 0:
            raise ValueError("--kv-disk-dir needs --kv-disk-bytes > 0")
        if min(self.host_bytes, self.disk_bytes) < 0:
            raise ValueError("KV tier sizes must not be negative")
        if (self.transport_dir or self.staged) and self.transport_bytes <= 0:
            raise ValueError("kv transport_bytes must be positive")
        if self.transport_dir and self.staged:
            raise ValueError("a worker has one KV transport: a directory or staged blocks")
        if self.lease_s <= 0:
            raise ValueError("kv lease_s must be positive")
        if self.events_replay_endpoint and not self.events_endpoint:
            raise ValueError("kv events_replay_endpoint needs events_endpoint")

    @property
    def publishes(self) -> bool:
        """Whether the engine collects KV events (a directory follows it)."""
        return self.events or self.events_endpoint is not None
