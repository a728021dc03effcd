"""The engine core: an LLMEngine stepped by one loop, fed by commands, in its own process.

The wire carries kind-tagged msgspec structs (msgpack). In the core process one thread reads the
input socket into a queue and another writes the output queue to the output socket, so the step
loop never waits on socket IO (vLLM v1's EngineCoreProc does the same). `EngineLoop` is shared
with the in-process client, which feeds the queue directly.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from aruntime.engine.config import EngineConfig
from aruntime.engine.default_model import served_name
from aruntime.engine.outputs import EngineStats, RequestOutput
from aruntime.engine.sampling import SamplingParams
from aruntime.errors import described
from aruntime.kv.keys import NO_SCOPE, CacheScope

if TYPE_CHECKING:
    from aruntime.engine.llm_engine import LLMEngine
    from aruntime.kv.publisher import KVEventPublisher

logger = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005

# --- client -> core ---------------------------------------------------------------------------


class AddRequest(msgspec.Struct, tag="add"):
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float | None = None
    scope: CacheScope = NO_SCOPE  # the namespaces its KV blocks are keyed in


class AbortRequests(msgspec.Struct, tag="abort"):
    request_ids: list[str]


class GetStats(msgspec.Struct, tag="stats"):
    nonce: int


class Shutdown(msgspec.Struct, tag="shutdown"):
    pass


Command = AddRequest | AbortRequests | GetStats | Shutdown


@dataclasses.dataclass(frozen=True, slots=True)
class EngineCall:
    """In-process only (InprocClient): run `fn(engine)` on the loop's thread between steps,
    the one place the engine may be touched, and settle `result` with its return or error."""

    fn: Callable[[LLMEngine], Any]
    result: concurrent.futures.Future[Any]


LoopCommand = Command | EngineCall

# --- core -> client ---------------------------------------------------------------------------


class ModelInfo(msgspec.Struct, frozen=True):
    """What the core reports once its model is loaded."""

    model: str  # the checkpoint directory or GGUF file
    name: str  # the default served model name: the directory's, the GGUF's stem less its quant
    revision: str  # "sha256:..." digest of the weights
    architecture: str
    max_model_len: int
    vocab_size: int
    device: str
    hardware: str  # e.g. "NVIDIA H100 80GB HBM3" or the CPU's name, for evidence records
    dtype: str
    block_size: int
    num_blocks: int
    eos_token_ids: list[int] = []


class Ready(msgspec.Struct, tag="ready"):
    info: ModelInfo


class Outputs(msgspec.Struct, tag="outputs"):
    outputs: list[RequestOutput]


class StatsReply(msgspec.Struct, tag="stats_reply"):
    nonce: int
    stats: EngineStats


class RequestFailed(msgspec.Struct, tag="request_failed"):
    """The engine refused one request (empty or too long prompt, duplicate id)."""

    request_id: str
    message: str


class RequestsLost(msgspec.Struct, tag="requests_lost"):
    """The engine lost these requests (a parallel rank died under them) and serves on: each
    fails as if its worker had died (retried elsewhere if nothing was streamed yet)."""

    request_ids: list[str]
    message: str


class EngineFailed(msgspec.Struct, tag="engine_failed"):
    """The engine could not start, or crashed; the core exits after sending this."""

    message: str


class Stopped(msgspec.Struct, tag="stopped"):
    """The loop ended after a Shutdown; every live request was aborted before this."""


CoreMessage = (Ready | Outputs | StatsReply | RequestFailed | RequestsLost | EngineFailed
               | Stopped)

command_encoder = msgspec.msgpack.Encoder()
command_decoder = msgspec.msgpack.Decoder(Command)
message_encoder = msgspec.msgpack.Encoder()
message_decoder = msgspec.msgpack.Decoder(CoreMessage)


def model_info(engine: LLMEngine, config: EngineConfig) -> ModelInfo:
    stats = engine.stats()
    mc = engine.model_config
    return ModelInfo(
        model=config.model,
        name=served_name(config.model),
        revision=engine.revision,
        architecture=mc.architecture,
        max_model_len=engine.max_model_len,
        vocab_size=mc.vocab_size,
        device=str(engine.device),
        hardware=_hardware(str(engine.device)),
        dtype=config.dtype,
        block_size=config.block_size,
        num_blocks=stats.num_blocks,
        eos_token_ids=list(mc.eos_token_ids),
    )


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    import platform

    return platform.processor() or platform.machine() or "cpu"


def abort_output(request_id: str) -> RequestOutput:
    return RequestOutput(request_id, [], "", finished=True, finish_reason="abort")


class EngineLoop:
    """Drains commands, steps the engine while it has work, and blocks on the queue when idle.

    `emit` receives every message for the client; it is called on the loop's thread.
    """

    def __init__(
        self,
        engine: LLMEngine,
        commands: queue.Queue[LoopCommand],
        emit: Callable[[CoreMessage], None],
        publisher: KVEventPublisher | None = None,
    ) -> None:
        self.engine = engine
        self.commands = commands
        self.emit = emit
        self.publisher = publisher  # told after each step, so the step's KV events go out
        self.live: set[str] = set()  # ids added and not yet finished or aborted
        self._stopping = False

    def run(self) -> None:
        while not self._stopping:
            if not self.engine.has_unfinished_requests():
                self._handle(self.commands.get())  # idle: block, no busy spin
            self._drain()
            if not self._stopping and self.engine.has_unfinished_requests():
                self._step()
        self._abort(sorted(self.live))
        self.emit(Stopped())

    def _drain(self) -> None:
        while not self._stopping:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            self._handle(command)

    def _step(self) -> None:
        from aruntime.engine.parallel.group import RankLostError

        try:
            outputs = self.engine.step()
        except RankLostError as exc:  # its requests fail now; the group restarts after
            self.emit(RequestsLost(sorted(self.live), str(exc)))
            self.live.clear()
            self.engine.recover_group()
            return
        if self.publisher is not None:
            self.publisher.on_step()
        for out in outputs:
            if out.finished:
                self.live.discard(out.request_id)
        if outputs:
            self.emit(Outputs(outputs))

    def _handle(self, command: LoopCommand) -> None:
        if isinstance(command, AddRequest):
            self._add(command)
        elif isinstance(command, EngineCall):
            try:
                command.result.set_result(command.fn(self.engine))
            except Exception as exc:  # the caller's error, not the loop's
                command.result.set_exception(exc)
        elif isinstance(command, AbortRequests):
            self._abort(command.request_ids)
        elif isinstance(command, GetStats):
            self.emit(StatsReply(command.nonce, self.engine.stats()))
        elif isinstance(command, Shutdown):
            self._stopping = True

    def _add(self, command: AddRequest) -> None:
        try:
            self.engine.add_request(
                command.request_id, command.prompt_token_ids, command.params, command.arrival_time,
                command.scope)
        except ValueError as exc:
            self.emit(RequestFailed(command.request_id, str(exc)))
            return
        self.live.add(command.request_id)

    def _abort(self, request_ids: list[str]) -> None:
        # Only ids the engine still runs: a request that finished meanwhile needs no abort.
        aborted = [rid for rid in request_ids if rid in self.live]
        for rid in aborted:
            self.engine.abort_request(rid)
            self.live.discard(rid)
        if aborted:
            self.emit(Outputs([abort_output(rid) for rid in aborted]))


# --- the core process -------------------------------------------------------------------------


def run_engine_core(config: EngineConfig, input_addr: str, output_addr: str,
                    socket_dir: str) -> None:
    """Process entry: load the engine, say Ready (or EngineFailed), then serve until Shutdown.
    `socket_dir` is the client's directory of the two ipc endpoints, this core's alone."""
    import zmq

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ctrl-C reaches the whole process group; the API server owns shutdown and tells us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The socket threads need the GIL for a moment per message while the engine thread runs
    # Python between tensor ops; at the default 5 ms switch interval a request or its first
    # token could wait that long at each hop whenever the engine is busy.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    _watch_parent(socket_dir)
    ctx = zmq.Context()
    commands: queue.Queue[LoopCommand] = queue.Queue()
    outbox: queue.Queue[CoreMessage | None] = queue.Queue()
    sender = threading.Thread(
        target=_send_loop, args=(ctx, output_addr, outbox), name="core-output", daemon=True
    )
    sender.start()
    code = 0
    publisher: KVEventPublisher | None = None
    try:
        from aruntime.engine.llm_engine import LLMEngine

        engine = LLMEngine(config)
        publisher = _kv_publisher(engine, config)
        outbox.put(Ready(model_info(engine, config)))
        threading.Thread(
            target=_recv_loop, args=(ctx, input_addr, commands), name="core-input", daemon=True
        ).start()
        try:
            EngineLoop(engine, commands, outbox.put, publisher).run()
        finally:
            engine.close()  # a tensor-parallel group's other ranks
    except BaseException as exc:  # the client must hear why, whatever it was
        from aruntime.engine.loader import CheckpointError

        if not isinstance(exc, CheckpointError):  # that one's message says it all, once
            logger.error("engine core failed:\n%s", traceback.format_exc())
        outbox.put(EngineFailed(described(exc)))
        code = 1
    if publisher is not None:
        publisher.shutdown()
    outbox.put(None)
    sender.join(timeout=10)
    ctx.term()  # waits for the output socket to flush (linger); stops the input thread's recv
    os._exit(code)


def _kv_publisher(engine: LLMEngine, config: EngineConfig) -> KVEventPublisher | None:
    """The worker's KV event publisher, when a cache directory is to follow it."""
    if config.kv.events_endpoint is None:
        return None
    from aruntime.kv.publisher import ZmqPublisher

    worker_id = config.worker_id or f"{socket.gethostname()}:{os.getpid()}"
    return ZmqPublisher(
        config.kv.events_endpoint, worker_id=worker_id, scheme=engine.key_scheme,
        lease_s=config.kv.lease_s, replay_endpoint=config.kv.events_replay_endpoint,
        drain=lambda: engine.drain_kv_events(worker_id),
    )


def _recv_loop(ctx: Any, addr: str, commands: queue.Queue[LoopCommand]) -> None:
    import zmq

    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(addr)
    while True:
        try:
            frame = sock.recv()
        except zmq.ContextTerminated:
            sock.close(linger=0)
            return
        try:
            commands.put(command_decoder.decode(frame))
        except msgspec.DecodeError:
            logger.exception("dropping a malformed command")


def _send_loop(ctx: Any, addr: str, outbox: queue.Queue[CoreMessage | None]) -> None:
    import zmq

    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(addr)
    while (message := outbox.get()) is not None:
        sock.send(message_encoder.encode(message))
    sock.close()


def _watch_parent(socket_dir: str) -> None:
    """Exit when the parent dies: nobody could read our outputs, and the KV cache is ours. The
    parent's ipc socket directory (`socket_dir`) is removed on the way out: nobody else will."""
    parent = multiprocessing.parent_process()
    ppid = os.getppid()

    def watch() -> None:
        sentinel = parent.sentinel if parent is not None else None
        while True:
            if sentinel is not None and multiprocessing.connection.wait([sentinel], timeout=1.0):
                break
            if sentinel is None:
                threading.Event().wait(1.0)
            if os.getppid() != ppid:
                break
        logger.warning("parent process %d is gone; engine core exiting", ppid)
        shutil.rmtree(socket_dir, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=watch, name="core-parent-watch", daemon=True).start()
