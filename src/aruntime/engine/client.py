"""The seam between the API server and the engine core: one interface, two transports.

`InprocClient` steps an LLMEngine on a thread in this process (tests, offline use);
`MPClient` talks to an engine core process over ZeroMQ (what `aruntime serve` uses).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from aruntime.engine.core_proc import ModelInfo


class EngineDeadError(RuntimeError):
    """The engine core stopped; requests in flight fail with this instead of hanging."""


class EngineClient(ABC):
    """Asynchronous access to one engine (or a pool behind one face). Called from the API
    server's event loop. Subclasses set `_info` once the model is loaded."""

    _info: ModelInfo | None = None
    keeps_loads = False  # True where the client tracks per-worker loads (candidate_loads)

    @property
    def model_info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._info

    @property
    @abstractmethod
    def is_alive(self) -> bool:
        """Whether requests can be served now (checked before a 200 starts a stream)."""

    def route_of(self, request_id: str) -> Any:
        """Where a request ran and what the router predicted; None for a single engine."""
        return None

    def running_beside(self, request_id: str) -> int | None:
        """Decodes running on the worker a request went to, by the client's own count; None
        where it keeps none (a single engine, whose load the API keeps itself)."""
        return None

    def candidate_loads(self, prompt: list[int], tenant_salt: bytes = b"",
                        shared_prefix_tokens: int = 0) -> list[Any] | None:
        """Per worker: its load and the cached tokens predicted for `prompt`. None for a single
        engine, whose load the API keeps itself."""
        return None

    def metrics_text(self) -> str:
        """Prometheus lines of the client's own (a pool's routing audit, say)."""
        return ""

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
