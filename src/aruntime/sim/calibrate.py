"""`aruntime sim calibrate`: measure step costs, KV size and bandwidths on the real engine.

Prefill steps of one prompt at several lengths and decode steps at several batch sizes and
contexts are timed on `LLMEngine`; one least-squares fit gives the Costs terms. Host-tier restore
is read from the engine's KV connector after a prompt is evicted and asked again; disk restore is
the page-cache file read of `bench cache`; KV transfer is the shared-memory transport of
disaggregated serving, prefill engine to decode engine, on this machine (pass
`sim run --network-gbps` for a real cluster's links)."""

from __future__ import annotations

import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aruntime.bench import hardware
from aruntime.bench.model_costs import load_model_config
from aruntime.engine.config import EngineConfig
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.config import KVConfig
from aruntime.sim.costs import Costs
from aruntime.timeutil import rfc3339, utc_now


def _prompt(n: int, salt: int) -> list[int]:
    return [100 + (salt * 7919 + i * 31) % 30000 for i in range(n)]


def time_prefill(engine: LLMEngine, length: int, salt: int) -> float:
    return time_prefill_prompt(engine, _prompt(length, salt), f"p{salt}")


def time_prefill_prompt(engine: LLMEngine, prompt: list[int], request_id: str) -> float:
    engine.add_request(request_id, prompt, SamplingParams(max_tokens=1, ignore_eos=True))
    t0 = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
    return time.perf_counter() - t0


def time_cached_prefill(engine: LLMEngine, context: int, new: int, salt: int) -> float:
    """A prompt whose first `context` tokens are cached (a previous prompt computed them) and
    `new` after them: the step that gathers the cached context for the new tokens."""
    prefix = _prompt(context, salt)
    time_prefill_prompt(engine, [*prefix, 7], f"c{salt}")  # caches the prefix's full blocks
    return time_prefill_prompt(engine, prefix + _prompt(new, salt + 1), f"q{salt}")


def time_decode(engine: LLMEngine, batch: int, context: int, steps: int, salt: int) -> float:
    params = SamplingParams(max_tokens=steps + 2, ignore_eos=True, temperature=0.0)
    for i in range(batch):
        engine.add_request(f"d{salt}-{i}", _prompt(context, salt * 1000 + i), params)
    started = 0
    while started < batch:  # prefill every prompt: each yields its first token
        started += len(engine.step())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    while engine.has_unfinished_requests():
        engine.step()
    # lower quartile: the machine is shared, noise only adds
    return statistics.quantiles(times, n=4)[0]


def _timed_prefills(model: str, length: int, repeats: int, start: Any, out: Any) -> None:
    """In a child process: one torch thread, an engine, a warm-up; then, once every sibling is
    ready, `repeats` prefills timed together."""
    import torch

    torch.set_num_threads(1)
    kv_token = load_model_config(Path(model)).kv_bytes_per_token()
    engine = LLMEngine(EngineConfig(model=model, enable_prefix_caching=False,
                                    kv_cache_bytes=2 * (length + 64) * kv_token,
                                    max_num_batched_tokens=max(length, 64)))
    time_prefill(engine, 64, 0)
    start.wait()
    t0 = time.perf_counter()
    for k in range(repeats):
        time_prefill(engine, length, k + 1)
    out.put(time.perf_counter() - t0)


def effective_cores(model: Path, processes: int, length: int = 512, repeats: int = 4) -> float:
    """How many one-thread engines' worth of prefill `processes` engine processes get done at
    once on this machine: processes x (time alone) / (mean time together). Below the core count
    when they contend for caches and memory bandwidth, as colocated workers do."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")

    def run(n: int) -> float:
        start, out = ctx.Barrier(n + 1), ctx.Queue()
        procs = [ctx.Process(target=_timed_prefills, args=(str(model), length, repeats, start, out))
                 for _ in range(n)]
        for p in procs:
            p.start()
        try:
            start.wait(timeout=300)
            times = [out.get(timeout=300) for _ in procs]
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
        return statistics.fmean(times)

    alone = run(1)
    together = run(processes)
    return processes * alone / together


def host_restore_gbps(model: Path, kv_token: int) -> float | None:
    """Restore a prompt that was evicted from a small device pool to the host tier."""
    n = 1024
    engine = LLMEngine(EngineConfig(model=str(model), kv_cache_bytes=(2 * n + 64) * kv_token,
                                    kv=KVConfig(host_bytes=8 * n * kv_token),
                                    max_num_batched_tokens=2048))
    for salt in (1, 2, 3, 1):
        time_prefill(engine, n, salt)
    kv = engine.kv
    if kv is None or not kv.restore_bytes.get("host"):
        return None
    return kv.restore_bytes["host"] / kv.restore_seconds["host"] / 1e9


def transport_gbps(model: Path, kv_token: int, tokens: int = 1024) -> float | None:
    """The KV transport of disaggregated serving: a prefill engine writes a prompt's blocks
    through to the shared-memory transport, a decode engine restores them into its device
    blocks (reads and copies, as `DisaggregatedPool` counts them)."""
    import shutil

    from aruntime.kv.shm_store import TRANSPORT_TIER, default_transport_root

    root = tempfile.mkdtemp(prefix="aruntime-cal-", dir=default_transport_root())
    try:
        def engine() -> LLMEngine:
            return LLMEngine(EngineConfig(
                model=str(model), kv_cache_bytes=2 * (tokens + 64) * kv_token,
                kv=KVConfig(transport_dir=root), max_num_batched_tokens=2048))

        prefill, decode = engine(), engine()
        vocab = prefill.model_config.vocab_size
        for salt in (1, 2, 3):  # the first restore pays for page faults in the mapping
            prompt = [t % vocab for t in _prompt(tokens, salt)]
            time_prefill_prompt(prefill, prompt, f"p{salt}")
            time_prefill_prompt(decode, prompt, f"d{salt}")
        kv = decode.kv
        moved = kv.restore_bytes.get(TRANSPORT_TIER) if kv else None
        if kv is None or not moved:
            return None
        return moved / kv.restore_seconds[TRANSPORT_TIER] / 1e9
    finally:
        shutil.rmtree(root, ignore_errors=True)


def loopback_gbps(nbytes: int = 128 << 20) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    chunk = b"\0" * (1 << 20)

    def send() -> None:
        with socket.create_connection(server.getsockname(), timeout=30) as s:
            for _ in range(nbytes >> 20):
                s.sendall(chunk)

    sender = threading.Thread(target=send)
    sender.start()
    conn, _ = server.accept()
    conn.settimeout(30)
    got, t0 = 0, time.perf_counter()
    with conn:
        while got < nbytes:
            data = conn.recv(1 << 20)
            if not data:
                break
            got += len(data)
    seconds = time.perf_counter() - t0
    sender.join(timeout=30)
    server.close()
    return got / seconds / 1e9


ROW_KNOTS = (2, 4, 8, 16, 32, 64)  # where a CPU step's cost by rows may bend: Costs.rows_s


_UNIT = Costs(0.0, 0.0, 0.0, 0.0, 0.0, 1)


def _rows_basis(rows: int) -> list[float]:
    """Costs.weights_s(rows) is linear in the knots' values and the slope beyond them: its
    value with each of those set to 1 and the rest to 0, so that the fit's terms are them."""
    def unit(j: int) -> float:
        knots = tuple((r, float(i == j)) for i, r in enumerate(ROW_KNOTS))
        return replace(_UNIT, rows_s=knots,
                       prefill_token_s=float(j == len(ROW_KNOTS))).weights_s(rows)

    return [unit(j) for j in range(len(ROW_KNOTS) + 1)]


def fit(prefill: list[tuple[int, int, float]],
        decode: list[tuple[int, int, float]]) -> Costs:
    """Least squares (of relative error) of step seconds on a step's fixed cost, its rows' cost
    along ROW_KNOTS and beyond, attention pairs, cached context, prompts started, batch and
    batch x context. Prefill points are one prompt each, as (new tokens, cached context,
    seconds); decode points (batch, context each, seconds). Negative terms (noise) are clipped
    to zero. Returns the step terms (the caller adds what else it measured)."""
    rows = [[1.0, *_rows_basis(n), n * c + n * (n + 1) / 2, c, 1.0, 0.0, 0.0]
            for n, c, _ in prefill]
    rows += [[1.0, *_rows_basis(b), 0.0, 0.0, 0.0, b, b * c] for b, c, _ in decode]
    y = np.array([t for _, _, t in prefill] + [t for _, _, t in decode])
    # relative errors: a 16-token step matters to a TTFT as much as a 2048-token one
    coef, *_ = np.linalg.lstsq(np.array(rows) / y[:, None], np.ones_like(y), rcond=None)
    v = [max(0.0, float(x)) for x in coef]
    k = len(ROW_KNOTS)
    s0, knots, slope = v[0], v[1:1 + k], v[1 + k]
    p2, pc, ps, d1, d2 = v[2 + k:]
    return Costs(step_s0=s0, prefill_token_s=slope, prefill_attn_s=p2, prefill_ctx_s=pc,
                 prefill_seq_s=ps, rows_s=tuple(zip(ROW_KNOTS, knots, strict=True)),
                 decode_seq_s=d1, decode_ctx_s=d2, kv_bytes_per_token=1)


def measure_bandwidths(model: Path, kv: int,
                       log: Callable[[str], None]) -> tuple[dict[str, float], float]:
    """Restore GB/s per tier (host as the engine restores it, disk as a page-cache file read),
    and the KV transfer rate: the shared-memory transport, else loopback TCP."""
    from aruntime.bench.probes import file_read_gbps

    restore: dict[str, float] = {}
    host = host_restore_gbps(model, kv)
    if host is not None:
        restore["host"] = host
    with tempfile.TemporaryDirectory() as tmp:
        restore["disk"] = file_read_gbps(Path(tmp), 64 << 20, 3)
    moved = transport_gbps(model, kv)
    net = moved if moved is not None else loopback_gbps()
    log(f"kv {kv} B/token; restore GB/s "
        f"{', '.join(f'{k} {v:.2f}' for k, v in restore.items())}; KV transfer "
        + (f"(shared-memory transport, prefill to decode engine) {net:.2f} GB/s"
           if moved is not None else f"(loopback TCP) {net:.2f} GB/s"))
    return restore, net


def calibrate(model: Path, quick: bool = False, log: Callable[[str], None] = print,
              bandwidths: bool = True, chunk: int | None = None) -> Costs:
    """The step-cost fit; with `bandwidths`, the tier restore and loopback figures too (a caller
    that simulates one colocated machine without tiers can skip them). With `chunk` (the
    engine's max_num_batched_tokens), prefill is measured in the steps such an engine runs:
    chunks of at most that many tokens, after whatever context came before them."""
    # short prompts pin down a step's fixed cost; cached contexts under several suffix lengths
    # tell the gather of a cached prefix from attention over it
    lengths = [1, 2, 4, 8, 16, 32, 64, 128, 512, 1024, 2048] if quick else [
        1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256, 512, 1024, 2048, 3072]
    contexts = (256, 1024) if quick else (128, 512, 1024, 2048)
    suffixes = [1, 16, 64]
    if chunk is not None:  # a CPU's cost per token bends with size: measure where it runs
        lengths = sorted({n for n in lengths if n < chunk} | {chunk})
        suffixes = sorted({n for n in suffixes if n < chunk} | {chunk})
    cached = tuple((c, n) for c in contexts for n in suffixes)
    shapes = ((1, 128), (1, 512), (2, 256), (4, 256), (16, 128), (16, 512)) if quick else tuple(
        (b, c) for b in (1, 2, 4, 8, 32) for c in (128, 1024))
    repeats, steps = (2, 8) if quick else (3, 16)
    engine = LLMEngine(EngineConfig(model=str(model), enable_prefix_caching=False,
                                    kv_cache_bytes=1 << 30, max_num_batched_tokens=4096))
    time_prefill(engine, 64, 0)  # warm-up: first calls pay for allocation and kernel set-up
    time_decode(engine, 2, 64, 4, 0)
    prefill = [(n, 0, min(time_prefill(engine, n, 10 * n + k) for k in range(repeats)))
               for n in lengths]
    caching = LLMEngine(EngineConfig(model=str(model), kv_cache_bytes=1 << 28,
                                     max_num_batched_tokens=4096))
    time_prefill(caching, 64, 0)
    prefill += [(n, c, min(time_cached_prefill(caching, c, n, 100 * c + 10 * n + 2 * k)
                           for k in range(repeats))) for c, n in cached]
    del caching
    for n, c, t in prefill:
        log(f"prefill {n:>5} tokens after {c:>5} cached: {t * 1e3:8.1f} ms")
    decode = [(b, c, time_decode(engine, b, c, steps, b * 10000 + c)) for b, c in shapes]
    for b, c, t in decode:
        log(f"decode batch {b:>3} context {c:>5}: {t * 1e3:7.2f} ms/step ({b / t:,.0f} tok/s)")
    terms = fit(prefill, decode)
    kv = load_model_config(model).kv_bytes_per_token()  # the engine keeps fp32 KV here
    log(f"fit: step {terms.step_s0 * 1e3:.2f} ms; rows "
        + ", ".join(f"{r}: +{t * 1e3:.2f} ms" for r, t in terms.rows_s)
        + f", then {terms.prefill_token_s * 1e6:.1f} us/row; {terms.prefill_attn_s * 1e9:.3f} "
        f"ns/pair + {terms.prefill_ctx_s * 1e6:.2f} us/cached context token + "
        f"{terms.prefill_seq_s * 1e3:.2f} ms/prompt + {terms.decode_seq_s * 1e3:.3f} ms/decode "
        f"seq + {terms.decode_ctx_s * 1e9:.2f} ns/context token")
    restore, net = measure_bandwidths(model, kv, log) if bandwidths else ({}, 1.0)
    return replace(terms, kv_bytes_per_token=kv, restore_gbps=restore, network_gbps=net,
                   model=f"{model.name}@{engine.revision}",
                   hardware=hardware.summary(hardware.describe("cpu")),
                   measured_at=rfc3339(utc_now()), source="calibrate")
