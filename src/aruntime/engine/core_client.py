"""Two transports for `EngineClient`: an engine core in its own process, or on a thread here.

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
import multiprocessing
import shutil
import tempfile
import threading
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import zmq
import zmq.asyncio

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
    Ready,
    RequestFailed,
    Shutdown,
    StatsReply,
    Stopped,
    command_encoder,
    message_decoder,
    model_info,
    run_engine_core,
)
from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.engine.sampling import SamplingParams
from aruntime.errors import described

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine

__all__ = ["EngineStartError", "InprocClient", "MPClient", "ModelInfo"]


class EngineStartError(EngineDeadError):
    """The engine core could not load its model; the message says why."""


_Item = RequestOutput | BaseException
T = TypeVar("T")


class _RoutingClient(EngineClient):
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
        tenant_salt: bytes = b"", shared_prefix_tokens: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        self._attach()
        self._check_alive()
        if request_id in self._queues:
            raise ValueError(f"request id {request_id!r} is already in flight")
        q: asyncio.Queue[_Item] = asyncio.Queue()
        self._queues[request_id] = q
        done = False
        try:
            self._submit(AddRequest(request_id, list(prompt_token_ids), params, time.time(),
                                    tenant_salt, shared_prefix_tokens))
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


class MPClient(_RoutingClient):
    """An engine core in a spawned process, spoken to over ZeroMQ ipc sockets.

    `start()` blocks until the model is loaded (or raises EngineStartError); the async methods
    then bind to the event loop that calls them first.
    """

    def __init__(self, config: EngineConfig, *, startup_timeout: float = 600.0) -> None:
        super().__init__()
        self.config = config
        self.startup_timeout = startup_timeout
        self._ctx: zmq.Context[Any] | None = None
        self._input: zmq.Socket[Any] | None = None
        self._output_sync: zmq.Socket[Any] | None = None
        self._output: zmq.asyncio.Socket | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sockdir: str | None = None
        self._closing = False

    @property
    def core_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> ModelInfo:
        if self._info is not None:
            return self._info
        self._sockdir = tempfile.mkdtemp(prefix="aruntime-core-")  # this core's ipc sockets
        in_addr = f"ipc://{self._sockdir}/input"
        out_addr = f"ipc://{self._sockdir}/output"
        self._ctx = zmq.Context()
        # The input socket connects (the core binds): a connecting PUSH queues from the start,
        # so nothing sent before the core's socket is up is lost or refused.
        self._input = self._ctx.socket(zmq.PUSH)
        self._input.setsockopt(zmq.SNDHWM, 0)
        self._input.setsockopt(zmq.LINGER, 0)
        self._input.connect(in_addr)
        self._output_sync = self._ctx.socket(zmq.PULL)
        self._output_sync.setsockopt(zmq.RCVHWM, 0)
        self._output_sync.setsockopt(zmq.LINGER, 0)
        self._output_sync.bind(out_addr)
        spawn = multiprocessing.get_context("spawn")
        self._proc = spawn.Process(
            target=run_engine_core,
            args=(self.config, in_addr, out_addr, self._sockdir),
            name="aruntime-engine-core",
            daemon=True,
        )
        self._proc.start()
        try:
            self._info = self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self._info

    def _wait_ready(self) -> ModelInfo:
        assert self._output_sync is not None and self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._output_sync.poll(200, zmq.POLLIN):
                message = message_decoder.decode(self._output_sync.recv())
                if isinstance(message, Ready):
                    return message.info
                if isinstance(message, EngineFailed):
                    raise EngineStartError(f"engine core failed to start: {message.message}")
            elif not self._proc.is_alive():
                raise EngineStartError(
                    f"engine core exited with code {self._proc.exitcode} before it was ready"
                )
        raise EngineStartError(f"engine core was not ready within {self.startup_timeout:.0f}s")

    def _submit(self, command: Command) -> None:
        assert self._input is not None
        try:
            # Unbounded HWM on a connecting socket: this never blocks, even inside `finally`.
            self._input.send(command_encoder.encode(command), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self._fail(EngineDeadError(f"cannot reach the engine core: {exc}"))
            raise EngineDeadError(str(self._dead)) from exc

    def _on_attach(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._output_sync is not None and self._proc is not None
        self._output = zmq.asyncio.Socket.from_socket(self._output_sync)
        self._reader = loop.create_task(self._read_outputs(), name="aruntime-core-output")
        loop.add_reader(self._proc.sentinel, self._on_core_exit)

    async def _read_outputs(self) -> None:
        assert self._output is not None
        while True:
            message = message_decoder.decode(await self._output.recv())
            self._dispatch(message)
            if isinstance(message, (Stopped, EngineFailed)):
                return

    def _on_core_exit(self) -> None:
        assert self._loop is not None and self._proc is not None
        self._loop.remove_reader(self._proc.sentinel)
        self._proc.join(1.0)
        if not self._closing:
            self._fail(EngineDeadError(
                f"engine core process {self._proc.pid} exited with code {self._proc.exitcode}"))

    async def shutdown(self) -> None:
        if self._closing or self._proc is None:
            return
        if self._dead is None and self._info is not None:
            self._submit(Shutdown())
            if self._reader is not None:
                # The core aborts what it runs, says Stopped, and exits.
                await asyncio.wait({self._reader}, timeout=30.0)
        self._closing = True
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            await asyncio.wait({self._reader}, timeout=5.0)
        await asyncio.to_thread(self._stop_process)
        self.close()

    def close(self) -> None:
        """Synchronous teardown: stop the core (killing it if it does not exit) and free sockets."""
        self._closing = True
        if self._dead is None and self._info is not None and self._input is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._input.send(command_encoder.encode(Shutdown()), zmq.NOBLOCK)
        self._stop_process()
        if self._loop is not None and self._proc is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError, ValueError):
                self._loop.remove_reader(self._proc.sentinel)
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        if self._dead is None:
            self._dead = EngineDeadError("the engine was shut down")
        for sock in (self._input, self._output_sync):
            if sock is not None and not sock.closed:
                sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None

    def _stop_process(self) -> None:
        if self._proc is None or self._proc.pid is None:  # never started (a sibling failed first)
            return
        self._proc.join(10.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5.0)


class InprocClient(_RoutingClient):
    """An LLMEngine stepped on a background thread of this process; same semantics as MPClient."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.config = config
        self._commands: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> ModelInfo:
        if self._info is not None:
            return self._info
        import queue

        from aruntime.engine.llm_engine import LLMEngine

        try:
            engine = LLMEngine(self.config)
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
        except BaseException as exc:
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
