"""KV tiers below the device: identical greedy outputs from every tier, stale blocks caught and
recomputed, key-scheme mismatches refused, tenants isolated. Redis is a real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis_server import redis_server
from tiny_engine import BLOCK, prompt

from aruntime.engine.config import EngineConfig
from aruntime.engine.llm_engine import LLMEngine
from aruntime.engine.sampling import SamplingParams
from aruntime.kv.block_format import KeySchemeMismatchError, decode, encode
from aruntime.kv.config import KVConfig
from aruntime.kv.disk_store import DiskStore
from aruntime.kv.keys import BlockKey, CacheScope, KeyScheme, prefix_keys
from aruntime.kv.redis_store import RedisStore

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url



def engine(model: Path, blocks: int = 64, enable_prefix_caching: bool = True,
           **kv: object) -> LLMEngine:
    """An engine on the tiny checkpoint; `kv` are KVConfig's fields (host_bytes, disk_dir...)."""
    block_bytes = 2 * 2 * 2 * BLOCK * 16 * 4  # tiny: layers * (k, v) * kv_heads * block * dim * 4
    return LLMEngine(EngineConfig(model=str(model), device="cpu", block_size=BLOCK,
                                  kv_cache_bytes=blocks * block_bytes,
                                  enable_prefix_caching=enable_prefix_caching,
                                  kv=KVConfig(**kv)))  # type: ignore[arg-type]


PROMPT = prompt(41, 1)  # 10 full blocks


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> list[int]:
    return engine(tiny_model_dir, enable_prefix_caching=False).generate(
        [PROMPT], GREEDY)[0].new_token_ids


def evict_device(eng: LLMEngine) -> None:
    """Run unrelated prompts until none of PROMPT's blocks is left in the device cache."""
    for seed in range(100, 110):
        eng.generate([prompt(60, seed)], GREEDY)


def test_host_tier_serves_evicted_prefix(tiny_model_dir: Path, reference: list[int]) -> None:
    eng = engine(tiny_model_dir, blocks=32, host_bytes=1 << 20)
    assert eng.generate([PROMPT], GREEDY)[0].new_token_ids == reference
    evict_device(eng)
    out = eng.generate([PROMPT], GREEDY)[0]
    assert out.new_token_ids == reference
    assert out.num_cached_tokens == 40 and eng.tiers.counters["host"].hits >= 10


def test_disk_tier_survives_a_restart_and_host_demotes_to_it(tiny_model_dir: Path, tmp_path: Path,
                                                             reference: list[int]) -> None:
    disk = {"disk_dir": str(tmp_path / "kv"), "disk_bytes": 1 << 20}
    first = engine(tiny_model_dir, host_bytes=3000, **disk)  # host holds ~2 blocks
    assert first.generate([PROMPT], GREEDY)[0].new_token_ids == reference
    first.tiers.flush()
    assert first.tiers.counters["host"].evictions >= 8
    assert len(list((tmp_path / "kv").glob("*.kv"))) >= 8
    first.tiers.close()
    second = engine(tiny_model_dir, **disk)  # a new engine: nothing on its device
    out = second.generate([PROMPT], GREEDY)[0]
    assert out.new_token_ids == reference and out.num_cached_tokens == 40
    assert second.tiers.counters["disk"].hits == 10


def test_redis_tier_is_shared_between_engines(tiny_model_dir: Path, redis_url: str,
                                              reference: list[int]) -> None:
    writer = engine(tiny_model_dir, redis_url=redis_url)
    writer.generate([PROMPT], GREEDY)
    reader = engine(tiny_model_dir, redis_url=redis_url)
    out = reader.generate([PROMPT], GREEDY)[0]
    assert out.new_token_ids == reference and out.num_cached_tokens == 40
    assert reader.tiers.counters["redis"].hits == 10


def corrupt_blocks(read: Callable[[BlockKey], bytes], write: Callable[[BlockKey, bytes], object],
                   keys: list[BlockKey], scheme: KeyScheme) -> None:
    """Flip a payload byte of one block, truncate another, replace a third with a block of
    another scheme under the same key."""
    blob = read(keys[0])
    write(keys[0], blob[:-1] + bytes([blob[-1] ^ 0xFF]))
    write(keys[1], read(keys[1])[:-100])
    other = KeyScheme(scheme.block_size, "sha256:" + "0" * 64)
    payload = decode(read(keys[2]), scheme, keys[2])
    write(keys[2], encode(other, keys[2], payload))


def test_stale_blocks_on_disk_are_dropped_and_recomputed(tiny_model_dir: Path, tmp_path: Path,
                                                         reference: list[int]) -> None:
    disk = {"disk_dir": str(tmp_path / "kv"), "disk_bytes": 1 << 20}
    first = engine(tiny_model_dir, **disk)
    first.generate([PROMPT], GREEDY)
    keys = _prompt_keys(first)
    files = {k: tmp_path / "kv" / f"{k.hex()}.kv" for k in keys}
    corrupt_blocks(lambda k: files[k].read_bytes(), lambda k, b: files[k].write_bytes(b),
                   [keys[5], keys[6], keys[7]], first.key_scheme)
    # Each restart meets the first bad block of the prefix, drops it and recomputes from there:
    # checksum mismatch, then truncation, then the foreign scheme; then the prefix is whole.
    for cached in (5, 6, 7):
        eng = engine(tiny_model_dir, **disk)
        out = eng.generate([PROMPT], GREEDY)[0]
        assert out.new_token_ids == reference
        assert out.num_cached_tokens == cached * BLOCK and eng.tiers.counters["disk"].stale == 1
        decode(files[keys[cached]].read_bytes(), first.key_scheme, keys[cached])  # rewritten
    assert engine(tiny_model_dir, **disk).generate([PROMPT], GREEDY)[0].num_cached_tokens == 40


def test_stale_blocks_in_redis_are_dropped_and_recomputed(tiny_model_dir: Path, redis_url: str,
                                                          reference: list[int]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    first = engine(tiny_model_dir, redis_url=redis_url)
    first.generate([PROMPT], GREEDY)
    keys = _prompt_keys(first)
    rkey = lambda k: f"aruntime:kv:{k.hex()}"  # noqa: E731
    corrupt_blocks(lambda k: client.get(rkey(k)), lambda k, b: client.set(rkey(k), b),
                   [keys[2], keys[3], keys[4]], first.key_scheme)
    for cached in (2, 3, 4):
        eng = engine(tiny_model_dir, redis_url=redis_url)
        out = eng.generate([PROMPT], GREEDY)[0]
        assert out.new_token_ids == reference
        assert out.num_cached_tokens == cached * BLOCK and eng.tiers.counters["redis"].stale == 1
        decode(client.get(rkey(keys[cached])), first.key_scheme, keys[cached])  # rewritten
    assert engine(tiny_model_dir, redis_url=redis_url).generate(
        [PROMPT], GREEDY)[0].num_cached_tokens == 40
    client.close()


def _prompt_keys(eng: LLMEngine) -> list[BlockKey]:
    return prefix_keys(eng.key_scheme.root(), PROMPT, BLOCK)


def test_key_scheme_mismatch_is_loud(tmp_path: Path, redis_url: str) -> None:
    a = KeyScheme(4, "sha256:" + "a" * 64)
    b = KeyScheme(8, "sha256:" + "a" * 64)
    DiskStore(tmp_path / "kv", 1 << 20, a)
    with pytest.raises(KeySchemeMismatchError, match="scheme"):
        DiskStore(tmp_path / "kv", 1 << 20, b)
    RedisStore(redis_url, a, prefix="aruntime:test-scheme").close()
    with pytest.raises(KeySchemeMismatchError):
        RedisStore(redis_url, b, prefix="aruntime:test-scheme")


def test_tenants_never_share_blocks(tiny_model_dir: Path, tmp_path: Path) -> None:
    eng = engine(tiny_model_dir, host_bytes=1 << 20)
    eng.add_request("a", PROMPT, GREEDY, scope=CacheScope(b"tenant-a"))
    while eng.has_unfinished_requests():
        eng.step()
    outs = []
    eng.add_request("b", PROMPT, GREEDY, scope=CacheScope(b"tenant-b"))
    while eng.has_unfinished_requests():
        outs += eng.step()
    assert outs[-1].num_cached_tokens == 0 and eng.tiers.counters["host"].hits == 0
    eng.add_request("a2", PROMPT, GREEDY, scope=CacheScope(b"tenant-a"))
    outs = []
    while eng.has_unfinished_requests():
        outs += eng.step()
    assert outs[-1].num_cached_tokens == 40


def test_kv_events_name_the_tier(tiny_model_dir: Path, tmp_path: Path) -> None:
    from aruntime.kv.events import BlockRemoved, BlockStored

    eng = engine(tiny_model_dir, blocks=32, host_bytes=3000, events=True,
                 disk_dir=str(tmp_path / "kv"), disk_bytes=1 << 20)
    eng.generate([PROMPT], GREEDY)
    eng.tiers.flush()
    batch = eng.drain_kv_events("w0")
    assert batch is not None and batch.worker_id == "w0"
    stored = {m: {h for e in batch.events if isinstance(e, BlockStored) and e.medium == m
                  for h in e.block_hashes} for m in ("device", "host", "disk")}
    keys = set(_prompt_keys(eng))
    assert keys <= stored["device"] and keys <= stored["host"] | stored["disk"]
    assert any(isinstance(e, BlockRemoved) and e.medium == "host" for e in batch.events)
    assert eng.drain_kv_events("w0") is None


def test_server_reports_tiers_in_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from aruntime.serve.launch import background_server

    config = EngineConfig(model=str(tiny_model_dir), device="cpu", block_size=BLOCK,
                          kv_cache_bytes=1 << 20,
                          kv=KVConfig(host_bytes=1 << 20, disk_dir=str(tmp_path / "kv"),
                                      disk_bytes=1 << 20))
    with background_server(config, tmp_path / "data", served_model_name="tiny") as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as http:
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2}
        assert http.post("/v1/completions", json=body).status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    stored = {s.labels["tier"]: s.value for s in families["aruntime:kv_tier_bytes"].samples}
    assert stored["host"] > 0 and "disk" in stored
    assert "aruntime:kv_tier_load_seconds" in families
    assert {s.labels["tier"] for s in families["aruntime:kv_tier_hits"].samples} == {"host", "disk"}


def test_serve_refuses_a_disk_tier_without_a_size(tiny_model_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "aruntime.cli", "serve", "--model",
                          str(tiny_model_dir), "--kv-disk-dir", str(tmp_path / "kv"),
                          "--data-dir", str(tmp_path / "data")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].endswith("--kv-disk-dir needs --kv-disk-bytes > 0")


def test_a_shared_prefix_crosses_tenants_only_when_published(tiny_model_dir: Path) -> None:
    eng = engine(tiny_model_dir)
    system = PROMPT[:16]  # four blocks: the common "system prompt"

    def cached(rid: str, salt: bytes, shared: int, tokens: list[int]) -> int:
        eng.add_request(rid, tokens, GREEDY, scope=CacheScope(salt, shared))
        outs = []
        while eng.has_unfinished_requests():
            outs += eng.step()
        return outs[-1].num_cached_tokens

    tail = prompt(12, 5)
    assert cached("a1", b"tenant-a", 16, system + tail) == 0
    # tenant b reuses the published prefix, and only it: its own continuation is its own
    assert cached("b1", b"tenant-b", 16, system + tail) == 16
    assert cached("b2", b"tenant-b", 16, system + tail) == 24  # its own blocks, now cached
    # without publishing, nothing crosses
    assert cached("c1", b"tenant-c", 0, system + tail) == 0


def test_host_store_evicts_lru_but_never_a_pinned_block() -> None:
    from aruntime.kv.block_format import BlockPayload
    from aruntime.kv.host_store import HostStore

    store = HostStore(capacity_bytes=3 * 100)
    keys = [BlockKey(bytes([i]) * 32) for i in range(5)]
    block = BlockPayload(bytearray(100), "float32", (25,))
    store.put(keys[0], block)
    store.pin(keys[0])  # e.g. a shared system prompt
    store.put(keys[1], block)
    store.put(keys[2], block)
    store.get(keys[1])  # used: keys[2] is now the least recently used unpinned block
    evicted = store.put(keys[3], block)
    assert [k for k, _ in evicted] == [keys[2]]
    assert store.contains(keys[0]) and store.contains(keys[1]) and store.contains(keys[3])
    store.unpin(keys[0])
    assert [k for k, _ in store.put(keys[4], block)] == [keys[0]]
    assert store.used_bytes() == 300


def test_workers_racing_to_announce_a_scheme_agree(tmp_path: Path) -> None:
    import threading

    from aruntime.kv.scheme_file import claim_scheme_file

    scheme = KeyScheme(4, "sha256:" + "a" * 64)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        try:
            claim_scheme_file(tmp_path / "scheme.json", scheme)
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and [p.name for p in tmp_path.iterdir()] == ["scheme.json"]
    with pytest.raises(KeySchemeMismatchError):
        claim_scheme_file(tmp_path / "scheme.json", KeyScheme(8, scheme.model_revision))


def test_a_load_whose_every_block_is_stale_recomputes_instead_of_failing(
        tiny_model_dir: Path, tmp_path: Path, reference: list[int]) -> None:
    """The prompt's first block is corrupt on disk: the load brings nothing back, and the engine
    computes the whole prompt (it used to raise from an empty batched copy and die)."""
    disk = {"disk_dir": str(tmp_path / "kv"), "disk_bytes": 1 << 20}
    first = engine(tiny_model_dir, **disk)
    first.generate([PROMPT], GREEDY)
    first.tiers.close()
    path = tmp_path / "kv" / f"{_prompt_keys(first)[0].hex()}.kv"
    blob = path.read_bytes()
    path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 0xFF]))
    eng = engine(tiny_model_dir, **disk)
    out = eng.generate([PROMPT], GREEDY)[0]
    assert out.new_token_ids == reference and out.num_cached_tokens == 0
    assert eng.tiers.counters["disk"].stale == 1
    again = eng.generate([PROMPT], GREEDY)[0]  # the engine lives on, and caches the prompt anew
    assert again.new_token_ids == reference and again.num_cached_tokens == 40


def test_a_damaged_scheme_file_sets_the_blocks_aside_and_the_server_starts(
        tiny_model_dir: Path, tmp_path: Path, reference: list[int],
        caplog: pytest.LogCaptureFixture) -> None:
    """Unreadable tier metadata is not a reason to stop serving: its blocks go to a quarantine
    directory (one warning naming the file), the tier starts empty, and a server starts on it."""
    import httpx

    from aruntime.serve.launch import background_server

    kv = tmp_path / "kv"
    disk = {"disk_dir": str(kv), "disk_bytes": 1 << 20}
    first = engine(tiny_model_dir, **disk)
    first.generate([PROMPT], GREEDY)
    first.tiers.close()
    blocks = sorted(p.name for p in kv.glob("*.kv"))
    (kv / "scheme.json").write_bytes(b'{"block_size": \xff\xfe\x00 torn')
    with caplog.at_level("WARNING"):
        eng = engine(tiny_model_dir, **disk)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(kv / "scheme.json") in warnings[0]
    [aside] = kv.glob("quarantine-*")
    assert sorted(p.name for p in aside.glob("*.kv")) == blocks and not list(kv.glob("*.kv"))
    out = eng.generate([PROMPT], GREEDY)[0]
    assert out.new_token_ids == reference and out.num_cached_tokens == 0
    eng.tiers.close()
    (kv / "scheme.json").write_bytes(b"\x00\x01 not json")
    config = EngineConfig(model=str(tiny_model_dir), device="cpu", block_size=BLOCK,
                          kv_cache_bytes=1 << 20, kv=KVConfig(**disk))  # type: ignore[arg-type]
    with background_server(config, tmp_path / "data", served_model_name="tiny") as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as http:
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
        got = http.post("/v1/completions", json=body)
    assert got.status_code == 200 and len(list(kv.glob("quarantine-*"))) == 2


def test_serve_refuses_a_readable_scheme_of_another_model_in_one_line(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    kv = tmp_path / "kv"
    kv.mkdir()
    other = KeyScheme(BLOCK, "sha256:" + "0" * 64)
    (kv / "scheme.json").write_text(json.dumps({"block_size": other.block_size,
                                                "model_revision": other.model_revision,
                                                "name": other.name, "version": other.version}))
    out = subprocess.run([sys.executable, "-m", "aruntime.cli", "serve", "--model",
                          str(tiny_model_dir), "--kv-disk-dir", str(kv), "--kv-disk-bytes",
                          str(1 << 20), "--block-size", str(BLOCK), "--device", "cpu",
                          "--data-dir", str(tmp_path / "data"), "--port", "18457"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("aruntime: error:") and "use another --kv-disk-dir" in last
    assert not list(kv.glob("quarantine-*"))  # another model's blocks are kept where they are
