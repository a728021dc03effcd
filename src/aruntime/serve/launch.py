"""`aruntime serve`: the engine core in its own process, the OpenAI API on uvicorn in this one.

`BackgroundServer` runs the same app on a thread of the calling process (tests, notebooks).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from aruntime import paths
from aruntime.engine.default_model import MODEL_HELP
from aruntime.errors import UsageError
from aruntime.policy import auth_args, policy_args, quota_args
from aruntime.serve import model_args, release_args
from aruntime.serve.model_args import check_backends, check_model_dir, check_sealed

if TYPE_CHECKING:
    from aruntime.adapt.artifact import Kind
    from aruntime.cluster.serving import ServingPool
    from aruntime.engine.config import EngineConfig

logger = logging.getLogger("aruntime.serve")
T = TypeVar("T")
# An idle keep-alive connection must outlive the client's pool expiry (httpx, and so the openai
# client, drop theirs after 5 s — uvicorn's own default): with equal timers a client can send on
# a connection in the instant the server closes it, and a request is lost without a response.
KEEP_ALIVE_S = 75


def uvicorn_limits() -> dict[str, Any]:
    """What uvicorn bounds for every connection (the rest of a request's limits are
    serve/limits.py's)."""
    from aruntime.serve.limits import MAX_HEAD_BYTES

    return {
        # h11, named, so that its bound holds on what it buffers of a head still arriving
        # (httptools, if installed, would take any)
        "http": "h11", "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_keep_alive": KEEP_ALIVE_S,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from aruntime.serve.limits import DEFAULT_MAX_BODY_BYTES

    parser.add_argument("--model", metavar="MODEL", default=None, help=MODEL_HELP)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", metavar="NAME", default=None,
                        help="the model id clients ask for (default: the directory name)")
    parser.add_argument("--kv-cache-bytes", type=int, default=256 * 1024 * 1024)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=1024)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--claims-root", type=Path, default=None, metavar="DIR",
                        help="the repository root whose claims/ the console lists (default: "
                             "the working directory)")
    parser.add_argument("--loop-board", default=None, metavar="PATH",
                        help="a real-time loop's board on this machine (its --board): the "
                             "engine yields between steps while the loop runs short of slack, "
                             "and runs as many threads as the CPUs it is left")
    _worker_arguments(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    model_args.add_arguments(parser)
    parser.add_argument("--data-dir", metavar="DIR", type=Path, default=None,
                        help="evidence log, its signing key and salts "
                             f"(default: {paths.data_dir()})")
    parser.add_argument("--tool-call-parser", default=None, choices=("hermes", "llama3_json"),
                        help="how the model writes tool calls (default: read from its chat "
                             "template; hermes when the template does not say)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        metavar="N", help="a request body over N bytes is refused (413) before "
                        f"it is read (default: {DEFAULT_MAX_BODY_BYTES >> 20} MiB)")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--tools", action="append", default=[], metavar="MODULE[:ATTR]",
                        help="tools to serve over MCP at /mcp (repeatable): a Tool, a list of "
                             "them, or a module's Tools")
    quota_args.add_arguments(parser)
    auth_args.add_arguments(parser)
    policy_args.add_arguments(parser)
    release_args.add_arguments(parser)


def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    workers = parser.add_argument_group("engine workers")
    workers.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                         help="each engine worker shards the model over N ranks (processes on "
                              "this machine joined by gloo): heads, MLP columns, vocabulary")
    workers.add_argument("--pipeline-parallel", type=int, default=1, metavar="M",
                         help="each engine worker's layers split into M stages, a rank each "
                              "(with --tensor-parallel N: M stages of N shards)")
    workers.add_argument("--micro-batches", type=int, default=0, metavar="K",
                         help="with --pipeline-parallel: each step cut into K parts that flow "
                              "stage to stage, so the stages overlap (default: one per stage)")
    workers.add_argument("--workers", type=int, default=1, metavar="N",
                         help="engine core processes on this machine, behind one router")
    workers.add_argument("--router-policy", default="kv",
                         choices=("kv", "round-robin", "random", "least-loaded"),
                         help="how the router picks a worker (with --workers > 1)")
    workers.add_argument("--prefill-workers", type=int, default=0, metavar="P",
                         help="disaggregated: P prefill workers hand KV to the decode workers")
    workers.add_argument("--decode-workers", type=int, default=0, metavar="D",
                         help="disaggregated: D decode workers stream the tokens")
    workers.add_argument("--kv-transport-dir", default=None, metavar="DIR",
                         help="where prefill workers hand KV to decode workers "
                              "(default: a fresh directory under /dev/shm)")
    workers.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                         help="run the workers as Ray actors, placed by role (custom resources "
                              "aruntime_prefill, aruntime_decode, aruntime_colocated), KV handed "
                              "over through Ray's object store: 'auto' joins RAY_ADDRESS or this "
                              "machine's cluster, else starts one; or a head's HOST:PORT")
    tiers = parser.add_argument_group("KV tiers below the device")
    tiers.add_argument("--kv-host-bytes", type=int, default=0, metavar="N",
                       help="host RAM for KV blocks (write-through from the device)")
    tiers.add_argument("--kv-disk-dir", default=None, metavar="DIR",
                       help="local directory for KV blocks demoted from host RAM")
    tiers.add_argument("--kv-disk-bytes", type=int, default=0, metavar="N")
    tiers.add_argument("--kv-redis", default=None, metavar="URL",
                       help="Redis server shared by workers, e.g. redis://127.0.0.1:6379/0")


def run(args: argparse.Namespace) -> int:
    from aruntime.engine.core_proc import SWITCH_INTERVAL_S
    from aruntime.serve.data_dir import DataDirClaim, DataDirInUseError

    sys.setswitchinterval(SWITCH_INTERVAL_S)  # the API's socket threads, as in the engine core
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _check_arguments(args)
    data_dir = Path(args.data_dir or paths.data_dir())
    releases = release_args.served(args)
    # --release model=NAME: its stable version, verified; else --model
    model = release_args.model_path(args, releases, data_dir) or _model_dir(args.model)
    check_sealed(model, args.kbs)
    try:  # before the model loads: a second server on this directory stops here, in one line
        claim = DataDirClaim(data_dir)
    except (DataDirInUseError, OSError) as exc:
        raise UsageError(str(exc)) from None
    try:
        return _serve(args, model, data_dir, releases)
    finally:
        claim.release()


def _model_dir(given: str | None) -> Path:
    """The checkpoint to serve, checked: --model's path, the default model, or the demo model
    (said loudly when asked for by name; a demo directory given by path is the caller's pick)."""
    from aruntime.engine.default_model import DEMO, ModelNotFoundError, resolve_model

    try:
        model = resolve_model(given)
    except ModelNotFoundError as exc:
        raise UsageError(str(exc)) from None
    check_model_dir(model)
    if given == DEMO:
        logger.warning("serving the DEMO model at %s. Its weights are RANDOM, so its output is "
                       "meaningless text. Leave out --model to serve the default model "
                       "(SmolLM2-135M-Instruct), or pass a checkpoint directory or GGUF file.",
                       model)
    return model


def _check_arguments(args: argparse.Namespace) -> None:
    auth_args.check(args)
    check_backends(args.backends)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: must be in 1-65535")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    if (args.prefill_workers or args.decode_workers) and (
            args.prefill_workers < 1 or args.decode_workers < 1 or args.workers != 1):
        raise UsageError("disaggregated serving needs --prefill-workers >= 1 and "
                         "--decode-workers >= 1, without --workers")
    if args.max_body_bytes < 1:
        raise UsageError(f"--max-body-bytes {args.max_body_bytes}: must be at least 1")
    if args.ray is not None and args.kv_transport_dir is not None:
        raise UsageError("--kv-transport-dir is for workers on this machine; with --ray the KV "
                         "goes through Ray's object store")


def _serve(args: argparse.Namespace, model: Path, data_dir: Path,
           releases: dict[Kind, str]) -> int:
    """Sign, start the engine client, serve until stopped."""
    import uvicorn

    from aruntime import telemetry
    from aruntime.engine.default_model import is_demo_model
    from aruntime.engine.loader import CheckpointError, load_checkpoint
    from aruntime.engine.tokenizer import Tokenizer, TokenizerError
    from aruntime.evidence.signing import DeploymentKey, SigningError, default_key_path
    from aruntime.serve.app import build_app

    try:  # before the engine starts, so that a bad key file or GGUF file is one line
        signer = DeploymentKey.load_or_create(default_key_path(data_dir))
        # A GGUF file is checked whole with its tokenizer (architecture, metadata, tensor types)
        tokenizer = (load_checkpoint(model).tokenizer if model.is_file()
                     else Tokenizer.from_dir(model))
        tracer = telemetry.process_tracer()  # a bad OTLP setting is one line too
    except (SigningError, OSError, TokenizerError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    quotas = quota_args.quotas_from(args)  # a bad quota file is one line, before the engine
    tools = _tools(args.tools)
    authenticator = auth_args.authenticator_from(args, data_dir)
    # a bad bundle, or a release that is missing or refused: one line
    authorizer, policy_reloader = release_args.authorizer_from(args, releases, data_dir)
    route_release = release_args.check_route(releases, data_dir)
    logger.info("evidence is signed by %s (%s)", signer.key_id, signer.path)
    client, config = _started_client(args, model)
    info = client.model_info
    name = args.served_model_name or info.name
    app = build_app(client, tokenizer, name, model_info=info,
                    data_dir=data_dir, demo=is_demo_model(model), owns_client=True,
                    signer=signer, tracer=tracer, tool_call_parser=args.tool_call_parser,
                    quotas=quotas, tools=tools, authenticator=authenticator,
                    authorizer=authorizer, policy_reloader=policy_reloader,
                    max_body_bytes=args.max_body_bytes, route_release=route_release,
                    model_release=release_args.model_engines(releases, config),
                    claims_root=args.claims_root)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=10, **uvicorn_limits())
    finally:
        client.close()
    return 0


def _tools(refs: list[str]) -> list[Any]:
    from aruntime.agents.tools import tools_from

    try:
        return [t for ref in refs for t in tools_from(ref)]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or paths.data_dir())


def _started_client(args: argparse.Namespace, model: Path
                    ) -> tuple[ServingPool, EngineConfig]:
    from aruntime.cluster.factory import open_pool
    from aruntime.cluster.ray.cluster import RayUnavailableError, connect
    from aruntime.engine.config import EngineConfig
    from aruntime.engine.core_client import EngineStartError
    from aruntime.kv.config import KVConfig

    try:
        kv = KVConfig(host_bytes=args.kv_host_bytes, disk_dir=args.kv_disk_dir,
                      disk_bytes=args.kv_disk_bytes, redis_url=args.kv_redis)
        config = EngineConfig(
            model=str(model), kv_cache_bytes=args.kv_cache_bytes, block_size=args.block_size,
            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len, device=args.device, kv=kv, kbs_url=args.kbs,
            backends=args.backends, backends_dir=str(_data_dir(args) / "backends"),
            loop_board=args.loop_board, tensor_parallel=args.tensor_parallel,
            pipeline_parallel=args.pipeline_parallel, micro_batches=args.micro_batches)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        if args.ray is not None:
            connect(args.ray)
        pool = open_pool(config, args.workers, args.router_policy,
                         prefill_workers=args.prefill_workers,
                         decode_workers=args.decode_workers,
                         transport_dir=args.kv_transport_dir, ray=args.ray is not None)
        info = pool.start()
    except (EngineStartError, RayUnavailableError) as exc:
        raise UsageError(str(exc)) from None
    pids = {w.worker_id: w.pid for w in pool.registry.values()}
    logger.info("engine workers ready (pids %s): %s (%s) on %s, max_model_len %d, %d KV blocks "
                "each", pids, info.name, info.revision[:19], info.device, info.max_model_len,
                info.num_blocks)
    return pool, config


class BackgroundServer:
    """Serve an ASGI app with uvicorn on a thread, on a port bound before the thread starts.

    Use as a context manager; `call(coro)` runs a coroutine on the server's event loop (where
    the app's engine client lives) and returns its result.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        import uvicorn

        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it a keep-alive response's last segment
        # waits for the client's delayed ACK, 40 ms a request on loopback (uvicorn's own
        # listening socket, `aruntime serve`'s, does not have the problem).
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level=log_level, lifespan="on",
                                timeout_graceful_shutdown=5, **uvicorn_limits())
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="aruntime-server", daemon=True)
        self._error: BaseException | None = None
        # set by `background_server`
        self.engine: ServingPool | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self._sock])

        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {self._error!r}")
            self._thread.join(0.02)
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def background_server(config: EngineConfig, data_dir: Path, *, served_model_name: str | None = None,
                      log_level: str = "warning", workers: int = 1,
                      router_policy: str = "kv", prefill_workers: int = 0,
                      decode_workers: int = 0, ray: bool = False,
                      tool_call_parser: str | None = None,
                      **app_options: Any) -> Iterator[BackgroundServer]:
    """The whole stack on loopback: an engine core process (or `workers` of them behind a
    router, or prefill and decode workers; Ray actors with `ray`, this process connected to a
    cluster already) and the API on a thread here. `app_options` go to `build_app` (the
    authenticator, the authorizer, ...)."""
    from aruntime.cluster.factory import open_pool
    from aruntime.engine.default_model import is_demo_model
    from aruntime.engine.tokenizer import Tokenizer
    from aruntime.serve.app import build_app

    client = open_pool(config, workers, router_policy, prefill_workers=prefill_workers,
                       decode_workers=decode_workers, ray=ray)
    info = client.start()
    try:
        app = build_app(client, Tokenizer.from_path(config.model),
                        served_model_name or info.name, model_info=info, data_dir=data_dir,
                        demo=is_demo_model(Path(config.model)), owns_client=True,
                        tool_call_parser=tool_call_parser, **app_options)
        with BackgroundServer(app, log_level=log_level) as server:
            server.engine = client
            yield server
    finally:
        client.close()
