"""Model calls from flows: one seam, `Models.complete`, always answered by an engine client.

A flow never builds an engine of its own. In a server its calls take the server's own path
(serve/flow_models.py: admission, routing over the pool, metrics, a request evidence record);
in `aruntime run` they go to an in-process engine client on `--model` (default: the default
model), started on the first call, so a flow that calls no model never loads one. Either way
the result names the model that answered and its revision digest, which the run's evidence
records.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from opentelemetry.trace import Tracer

from aruntime import telemetry
from aruntime.agents import tracing
from aruntime.agents.tracing import EngineTimes
from aruntime.engine.client import EngineClient
from aruntime.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from aruntime.engine.core_client import InprocClient

T = TypeVar("T")
CALL_TIMEOUT_S = 600.0  # one completion, queueing included


class Models(ABC):
    """What `ctx.call_model` calls, on the flow's thread (never an event loop's)."""

    @property
    def name(self) -> str:
        """The name the model is served under: what a model call's policy decision is about."""
        return "model"

    @abstractmethod
    def complete(self, prompt: str, *, max_tokens: int, temperature: float,
                 seed: int | None, tenant: str = "default") -> dict[str, Any]:
        """One completion for `tenant` (whose KV namespace and quota it uses, where those
        exist): `text`, `token_ids`, `finish_reason`, `model` (the name it was served under),
        `model_revision`, and `request_id` where a request log has it."""


class TextCodec(Protocol):
    """The tokenizer's part a completion needs."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class LoopThread:
    """An event loop on a daemon thread, where an engine client lives for synchronous callers."""

    def __init__(self, name: str = "aruntime-models") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        return run_on(self.loop, coro, timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        self.loop.close()


def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T],
           timeout: float = CALL_TIMEOUT_S) -> T:
    """Run `coro` on `loop` (another thread's) and wait for it here."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("a model call cannot wait on the event loop it must run on; "
                           "call it from the flow's own thread")
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


async def client_complete(client: EngineClient, codec: TextCodec, request_id: str, prompt: str,
                          params: SamplingParams
                          ) -> tuple[list[int], str | None, EngineTimes | None]:
    """The output token ids and finish reason of one request through `client`, and its last
    output (the engine's timings of it)."""
    ids: list[int] = []
    reason, last = None, None
    async for out in client.generate(request_id, codec.encode(prompt), params):
        ids.extend(out.new_token_ids)
        reason = out.finish_reason if out.finished else reason
        last = out
    return ids, reason, last


class LocalModels(Models):
    """`aruntime run`'s models: an in-process engine client on `model_dir` (None: the default
    model), started on the first call on a loop thread of its own. Each call is a span on
    `tracer` (default: the process's), a child of the flow's run span."""

    def __init__(self, model_dir: Path | None = None, *, device: str = "auto",
                 tracer: Tracer | None = None) -> None:
        self.model_dir = model_dir
        self.device = device
        self.tracer = tracer or telemetry.process_tracer()
        self._client: InprocClient | None = None
        self._codec: TextCodec | None = None
        self._loop: LoopThread | None = None
        self._lock = threading.Lock()

    def _start(self) -> tuple[InprocClient, TextCodec, LoopThread]:
        with self._lock:
            if self._client is None or self._codec is None or self._loop is None:
                from aruntime.engine.config import EngineConfig
                from aruntime.engine.core_client import InprocClient
                from aruntime.engine.default_model import resolve_model
                from aruntime.engine.tokenizer import Tokenizer

                model = Path(self.model_dir or resolve_model(None))
                client = InprocClient(EngineConfig(model=str(model), device=self.device))
                client.start()
                self.model_dir = model
                self._codec = Tokenizer.from_path(model)
                self._loop = LoopThread()
                self._client = client
            return self._client, self._codec, self._loop

    @property
    def name(self) -> str:
        from aruntime.engine.default_model import resolve_model, served_name

        return served_name(Path(self.model_dir or resolve_model(None)))

    def complete(self, prompt: str, *, max_tokens: int, temperature: float,
                 seed: int | None, tenant: str = "default") -> dict[str, Any]:
        client, codec, loop = self._start()  # one process, one tenant: `tenant` changes nothing
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
        info, request_id = client.model_info, f"flow-{uuid.uuid4().hex}"
        with tracing.model_span(self.tracer, info.name, params) as span:
            ids, reason, last = loop.call(client_complete(client, codec, request_id, prompt,
                                                          params))
            tracing.model_done(self.tracer, span, request_id, info.name, len(ids), reason, last)
        return {"text": codec.decode(ids), "token_ids": ids, "finish_reason": reason,
                "model": info.name, "model_revision": info.revision}

    def close(self) -> None:
        if self._client is not None and self._loop is not None:
            self._loop.call(self._client.shutdown())
            self._loop.stop()
        self._client = self._loop = None
