"""The seam between the engine and whoever serves it: one interface, two transports.

`InprocClient` steps an LLMEngine on a thread in this process (tests, Ray actors, `aruntime
run`); `MPClient` talks to an engine core process over ZeroMQ (what `aruntime serve`'s workers
are), in engine/core_client.py and engine/mp_client.py. Routing, loads and audits are not the
engine's: they belong to the pool that drives one or more clients (cluster/).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.keys import NO_SCOPE, CacheScope

if TYPE_CHECKING:
    from aruntime.engine.core_proc import ModelInfo

__all__ = ["EngineClient", "EngineDeadError"]


class EngineDeadError(RuntimeError):
    """The engine core stopped; requests in flight fail with this instead of hanging."""


class EngineClient(ABC):
    """Asynchronous access to one engine. Called from one event loop (the first that uses it).
    Subclasses set `_info` once the model is loaded."""

    _info: ModelInfo | None = None

    @property
    def model_info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._info

    @property
    @abstractmethod
    def is_alive(self) -> bool:
        """Whether requests can be served now (checked before a 200 starts a stream)."""

    @abstractmethod
    def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 scope: CacheScope = NO_SCOPE) -> AsyncGenerator[RequestOutput, None]:
        """Submit a request and yield its deltas until one has `finished`. Closing the iterator
        early (client disconnect, cancellation) aborts the request and frees its blocks.
        `scope` says which namespaces its KV blocks are keyed in (kv/keys.py)."""

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Abort a request if it is still running; unknown ids are ignored."""

    @abstractmethod
    async def stats(self) -> EngineStats:
        """A fresh snapshot of the engine's counters."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Stop the engine; requests in flight finish with finish_reason 'abort'."""
