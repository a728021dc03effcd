"""The seam between the API server and the engine core: one interface, two transports.

`InprocClient` steps an LLMEngine on a thread in this process (tests, offline use);
`MPClient` talks to an engine core process over ZeroMQ (what `aruntime serve` uses).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.engine.sampling import SamplingParams


class EngineDeadError(RuntimeError):
    """The engine core stopped; requests in flight fail with this instead of hanging."""


class EngineClient(ABC):
    """Asynchronous access to one engine. Called from the API server's event loop."""

    @abstractmethod
    def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
        tenant_salt: bytes = b"", shared_prefix_tokens: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request and yield its deltas until one has `finished`. Closing the iterator
        early (client disconnect, cancellation) aborts the request and frees its blocks.
        `tenant_salt` keys its KV blocks in the tenant's namespace; the first
        `shared_prefix_tokens` are keyed in the shared one (a prefix published on purpose)."""

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Abort a request if it is still running; unknown ids are ignored."""

    @abstractmethod
    async def stats(self) -> EngineStats:
        """A fresh snapshot of the engine's counters."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Stop the engine; requests in flight finish with finish_reason 'abort'."""
