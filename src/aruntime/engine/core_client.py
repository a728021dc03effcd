"""Two transports for `EngineClient`: an engine core in its own process (engine/mp_client.py),
or on a thread here (`InprocClient`).

Both route the core's messages to per-request asyncio queues on the event loop that first uses
them, and share `generate`: closing the iterator early sends an abort, so a client that
disconnects frees its KV blocks at once. If the core dies, every pending call raises
`EngineDeadError` instead of hanging.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aruntime.engine.client import EngineClient, EngineDeadError
from aruntime.engine.config import EngineConfig
from aruntime.engine.core_proc import (
    AbortRequests,
    AddRequest,
    Command,
    CoreMessage,
    EngineCall,
    EngineFailed,
    EngineLoop,
    GetStats,
    ModelInfo,
    Outputs,
    RequestFailed,
    RequestsLost,
    Shutdown,
    StatsReply,
    Stopped,
    model_info,
)
from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.engine.sampling import SamplingParams
from aruntime.errors import described
from aruntime.kv.keys import NO_SCOPE, CacheScope

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine
    from aruntime.engine.parallel.launch import RankLauncher

__all__ = ["EngineStartError", "InprocClient", "ModelInfo"]


class EngineStartError(EngineDeadError):
    """The engine core could not load its model; the message says why."""


_Item = RequestOutput | BaseException
T = TypeVar("T")


class RoutingClient(EngineClient):
    """Per-request queues and stats futures on one event loop; transports supply `_submit`."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue[_Item]] = {}
        self._stats_waiters: dict[int, asyncio.Future[EngineStats]] = {}
        self._nonces = itertools.count()
        self._dead: EngineDeadError | None = None

    @property
    def is_alive(self) -> bool:
        return self._info is not None and self._dead is None

    @abstractmethod
    def _submit(self, command: Command) -> None:
        """Hand a command to the core without waiting (safe inside `finally` under cancel)."""

    def _attach(self) -> None:
        """Bind to the running loop on first use; transports add their readers here."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            raise RuntimeError("this engine client is bound to another event loop")
        self._loop = loop
        self._on_attach(loop)

    def _on_attach(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def _check_alive(self) -> None:
        if self._info is None:
            raise RuntimeError("the engine client has not been started")
        if self._dead is not None:
            raise EngineDeadError(str(self._dead))

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
        scope: CacheScope = NO_SCOPE,
    ) -> AsyncGenerator[RequestOutput, None]:
        self._attach()
        self._check_alive()
        if request_id in self._queues:
            raise ValueError(f"request id {request_id!r} is already in flight")
        q: asyncio.Queue[_Item] = asyncio.Queue()
        self._queues[request_id] = q
        done = False
        try:
            self._submit(AddRequest(request_id, list(prompt_token_ids), params, time.time(),
                                    scope))
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    done = True  # the core holds nothing for a refused request or a dead core
                    raise item
                done = item.finished
                yield item
                if done:
                    return
        finally:
            if self._queues.get(request_id) is q:
                del self._queues[request_id]
            if not done and self._dead is None:
                self._submit(AbortRequests([request_id]))

    async def abort(self, request_id: str) -> None:
        self._attach()
        if self._dead is None and self._info is not None:
            self._submit(AbortRequests([request_id]))

    async def stats(self, timeout: float = 10.0) -> EngineStats:
        self._attach()
        self._check_alive()
        nonce = next(self._nonces)
        fut: asyncio.Future[EngineStats] = asyncio.get_running_loop().create_future()
        self._stats_waiters[nonce] = fut
        try:
            self._submit(GetStats(nonce))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._stats_waiters.pop(nonce, None)

    def _dispatch(self, message: CoreMessage) -> None:
        """Route one core message; runs on the bound loop."""
        if isinstance(message, Outputs):
            for out in message.outputs:
                q = self._queues.get(out.request_id)
                if q is not None:
                    q.put_nowait(out)
        elif isinstance(message, StatsReply):
            fut = self._stats_waiters.pop(message.nonce, None)
            if fut is not None and not fut.done():
                fut.set_result(message.stats)
        elif isinstance(message, RequestFailed):
            q = self._queues.get(message.request_id)
            if q is not None:
                q.put_nowait(ValueError(message.message))
        elif isinstance(message, RequestsLost):
            for request_id in message.request_ids:
                q = self._queues.get(request_id)
                if q is not None:
                    q.put_nowait(EngineDeadError(message.message))
        elif isinstance(message, EngineFailed):
            self._fail(EngineDeadError(f"engine core failed: {message.message}"))
        elif isinstance(message, Stopped):
            self._fail(EngineDeadError("the engine was shut down"))

    def _fail(self, error: EngineDeadError) -> None:
        if self._dead is None:
            self._dead = error
        for q in self._queues.values():
            q.put_nowait(EngineDeadError(str(error)))
        for fut in self._stats_waiters.values():
            if not fut.done():
                fut.set_exception(EngineDeadError(str(error)))


class InprocClient(RoutingClient):
    """An LLMEngine stepped on a background thread of this process; same semantics as MPClient."""

    def __init__(self, config: EngineConfig, rank_launcher: RankLauncher | None = None) -> None:
        super().__init__()
        self.config = config
        self.rank_launcher = rank_launcher  # a parallel group's other ranks: where they start
        self._commands: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> ModelInfo:
        if self._info is not None:
            return self._info
        import queue

        from aruntime.engine.llm_engine import LLMEngine

        try:
            engine = LLMEngine(self.config, self.rank_launcher)
        except Exception as exc:
            raise EngineStartError(f"engine failed to start: {described(exc)}") from exc
        self._commands = queue.Queue()
        loop = EngineLoop(engine, self._commands, self._emit)
        self._thread = threading.Thread(
            target=self._run, args=(loop,), name="aruntime-engine", daemon=True
        )
        self._info = model_info(engine, self.config)
        self._thread.start()
        return self._info

    def _run(self, loop: EngineLoop) -> None:
        try:
            loop.run()
        except BaseException as exc:  # reported to every waiter
            self._emit(EngineFailed(described(exc)))

    def _emit(self, message: CoreMessage) -> None:
        """Called on the engine thread: hop onto the bound loop."""
        if self._loop is None:
            if isinstance(message, (EngineFailed, Stopped)):
                self._dead = EngineDeadError(str(message))
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed; nobody is waiting
            self._loop.call_soon_threadsafe(self._dispatch, message)

    def _submit(self, command: Command) -> None:
        self._commands.put(command)

    async def call(self, fn: Callable[[LLMEngine], T], timeout: float = 60.0) -> T:
        """`fn(engine)` run on the engine's thread between steps (KV export and import)."""
        self._attach()
        self._check_alive()
        result: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._commands.put(EngineCall(fn, result))
        return await asyncio.wait_for(asyncio.wrap_future(result), timeout)

    async def shutdown(self) -> None:
        if self._thread is None:
            return
        self._commands.put(Shutdown())
        await asyncio.to_thread(self._thread.join, 30.0)
        await asyncio.sleep(0)  # let the Stopped message that preceded the join be dispatched
        self._thread = None

    def close(self) -> None:
        if self._thread is not None:
            self._commands.put(Shutdown())
            self._thread.join(30.0)
            self._thread = None
        if self._dead is None:
            self._dead = EngineDeadError("the engine was shut down")
