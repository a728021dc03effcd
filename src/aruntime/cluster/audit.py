"""What a pool counts about its own decisions: the routing audit (predicted against reused
cached tokens, retries, failures) and the KV transport's (handoffs between prefill and decode
workers, and how fast the transport restored them). Plain counters; cluster/metrics.py exports
them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Audit:
    requests: int = 0  # requests whose first token came (prediction checked)
    predicted_tokens: int = 0
    used_tokens: int = 0
    abs_error_tokens: int = 0
    retries: int = 0
    failed_mid_stream: int = 0

    @property
    def error(self) -> float:
        """Absolute prediction error as a share of the tokens actually reused."""
        return self.abs_error_tokens / max(1, self.used_tokens)

    def checked(self, predicted: int, used: int) -> None:
        """A routed request's first token came: its prediction meets what the engine reused."""
        self.requests += 1
        self.predicted_tokens += predicted
        self.used_tokens += used
        self.abs_error_tokens += abs(predicted - used)


@dataclass(slots=True)
class TransportAudit:
    handoffs: int = 0  # requests prefilled on one worker and decoded on another
    prefill_skipped: int = 0  # prompts shorter than a block: nothing to hand over
    kept_on_device: int = 0  # device-only (confidential) prompts: nothing may be handed over
    prefill_fallbacks: int = 0  # no prefill worker answered: decode prefilled it
    restored_bytes: int = 0  # by decode workers, from the transport (as of the last stats())
    restore_seconds: float = 0.0

    @property
    def bandwidth(self) -> float:
        """Bytes per second restored from the transport into decode workers' device blocks."""
        return self.restored_bytes / self.restore_seconds if self.restore_seconds else 0.0
