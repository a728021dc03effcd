"""`MPClient`: an engine core in a spawned process, spoken to over ZeroMQ ipc sockets (what
`aruntime serve`'s workers are). Its message routing is `RoutingClient`'s (engine/core_client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import shutil
import time
from typing import Any

import zmq
import zmq.asyncio

from aruntime.engine.client import EngineDeadError
from aruntime.engine.config import EngineConfig
from aruntime.engine.core_client import EngineStartError, RoutingClient
from aruntime.engine.core_proc import (
    Command,
    EngineFailed,
    ModelInfo,
    Ready,
    Shutdown,
    Stopped,
    command_encoder,
    message_decoder,
    run_engine_core,
)
from aruntime.ipc_dir import ipc_dir

__all__ = ["MPClient"]


class MPClient(RoutingClient):
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
        self._sockdir = ipc_dir("aruntime-core-")  # this core's ipc sockets
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
