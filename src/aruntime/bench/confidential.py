"""`aruntime bench confidential`: what confidentiality costs, in one run — the attestation
handshake (the verifier's nonce, the server's evidence over HTTP, the appraisal and the EAR the
client checks), HPKE seal and open per KiB, and a confidential request's time to its one-token
answer against the same request in clear, alternating on one server (the demo model, the
software attester); ratio last.

Each probe's prompt is new (a counter in it), so no probe is served by the prefix cache, and
the mode that goes first alternates (the first request after a pause pays the engine's wake-up).
The confidential one pays the handshake once per client, as a client that reuses its attested
key does, and the seal, the open and the sealed answer every time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aruntime.bench.report import Outcome, Report, add_json_argument, json_path, progress_notes


@dataclass(frozen=True, slots=True)
class Workload:
    handshakes: int
    probes: int  # per mode, alternating
    seal_kib: int = 64  # payload of each seal/open sample
    seals: int = 200

    def describe(self) -> str:
        return (f"{self.handshakes} handshakes; {self.seals} seal/open of {self.seal_kib} KiB; "
                f"{self.probes} one-token chats per mode, alternating, fresh prompts")


FULL, QUICK = Workload(30, 30), Workload(5, 6, seals=40)


@dataclass
class Samples:
    handshake: list[float] = field(default_factory=list)
    seal: list[float] = field(default_factory=list)  # seconds per KiB
    open: list[float] = field(default_factory=list)
    clear: list[float] = field(default_factory=list)
    sealed: list[float] = field(default_factory=list)


def _seal_open(w: Workload, s: Samples) -> None:
    from aruntime.confidential.sealing import REQUEST_INFO, SealingKey, seal

    key, payload = SealingKey(), bytes(range(256)) * 4 * w.seal_kib
    for _ in range(w.seals):
        t0 = time.perf_counter()
        sealed = seal(payload, key.public_bytes, REQUEST_INFO)
        t1 = time.perf_counter()
        key.open(sealed, REQUEST_INFO)
        t2 = time.perf_counter()
        s.seal.append((t1 - t0) / w.seal_kib)
        s.open.append((t2 - t1) / w.seal_kib)


def _client(url: str, revision: str) -> Any:
    from aruntime.confidential.appraisal import AppraisalPolicy
    from aruntime.confidential.attester import package_digest
    from aruntime.confidential.client import ConfidentialClient
    from aruntime.confidential.verifier import Verifier
    from aruntime.evidence.signing import DeploymentKey

    policy = AppraisalPolicy.from_json({
        "policy_id": "bench", "accepted_attesters": ["software"],
        "reference_values": {"aruntime": [package_digest()], "model": [revision]}})
    key = DeploymentKey.generate()
    return ConfidentialClient(url, Verifier(key, {"bench": policy}), "bench",
                              verifier_key=key.public_key)


def measure(model_dir: Path, w: Workload, progress: TextIO | None) -> tuple[Samples, str]:
    import httpx

    from aruntime.engine.config import EngineConfig
    from aruntime.serve.launch import background_server

    note, s = progress_notes(progress), Samples()
    note("seal and open")
    _seal_open(w, s)
    config = EngineConfig(model=str(model_dir), max_model_len=512,
                          kv_cache_bytes=32 * 1024 * 1024)
    with tempfile.TemporaryDirectory() as data, \
            background_server(config, Path(data), served_model_name="bench") as srv, \
            httpx.Client(base_url=srv.url, timeout=120) as http:
        revision = srv.app.state.server.info.revision
        client = _client(srv.url, revision)
        note(f"{w.handshakes} handshakes")
        for _ in range(w.handshakes):
            t0 = time.perf_counter()
            attested = client.attest()
            s.handshake.append(time.perf_counter() - t0)
        note(f"{w.probes} probes per mode")
        for i in range(w.probes + 1):  # the first pair warms both paths up, not counted
            clear = _chat(f"Summarise ticket {i} in one line, please, for the on-call team.")
            sealed = _chat(f"Summarise account {i} in one line, please, for the auditor.")
            # who goes first alternates: the first request after an idle gap pays the wake-up
            for mode in (("clear", "sealed") if i % 2 else ("sealed", "clear")):
                t0 = time.perf_counter()
                if mode == "clear":
                    assert http.post("/v1/chat/completions", json=clear).status_code == 200
                else:
                    client.chat(sealed, attested)
                if i:
                    getattr(s, mode).append(time.perf_counter() - t0)
        client.close()
    return s, revision


def _chat(text: str) -> dict[str, Any]:
    return {"model": "bench", "messages": [{"role": "user", "content": text}],
            "max_tokens": 1, "temperature": 0}


def run_bench(model_dir: Path, w: Workload, *, json_path: Path | None = None,
              out: TextIO | None = None, progress: TextIO | None = None) -> Outcome:
    from aruntime.bench import hardware
    from aruntime.bench.claim import ClaimSpec
    from aruntime.bench.stats import p99

    started = time.perf_counter()
    s, revision = measure(model_dir, w, progress)
    med = statistics.median
    f: dict[str, float | int | str] = {
        "handshake_p50_ms": round(med(s.handshake) * 1e3, 2),
        "handshake_p99_ms": round(p99(s.handshake) * 1e3, 2),
        "seal_us_per_kib": round(med(s.seal) * 1e6, 2), "open_us_per_kib": round(
            med(s.open) * 1e6, 2), "clear_p50_ms": round(med(s.clear) * 1e3, 2),
        "confidential_p50_ms": round(med(s.sealed) * 1e3, 2), "probes": len(s.clear)}
    ratio = float(f["confidential_p50_ms"]) / float(f["clear_p50_ms"])
    f["ttft_ratio"] = round(ratio, 3)
    hw = hardware.describe("cpu")
    report = Report(out)
    report.lines(["aruntime bench confidential: software attester, HPKE X25519/AES-256-GCM",
                  f"hardware: {hardware.summary(hw)}", f"workload: {w.describe()}", ""])
    report.facts([("handshake p50 / p99", f"{f['handshake_p50_ms']} / "
                                          f"{f['handshake_p99_ms']} ms"),
                  ("seal / open per KiB", f"{f['seal_us_per_kib']} / {f['open_us_per_kib']} us"),
                  ("one-token chat p50, clear", f"{f['clear_p50_ms']} ms"),
                  ("one-token chat p50, confidential", f"{f['confidential_p50_ms']} ms")], 36)
    for name in ("handshake", "seal", "open", "clear", "sealed"):
        report.reading(f"{name}_s", [round(x, 6) for x in getattr(s, name)])
    report.reading("metrics", f)
    value, base = float(f["confidential_p50_ms"]), float(f["clear_p50_ms"])
    claim = ClaimSpec(
        statement=(f"A confidential one-token chat (sealed to the attested key, answered "
                   f"sealed) takes {value:.1f} ms p50 against {base:.1f} ms in clear on the "
                   f"same server ({ratio:.2f}x); the handshake {f['handshake_p50_ms']} ms p50"),
        metric="confidential_ttft", value=value, unit="ms", direction="lower-is-better",
        baseline_name="the same chat in clear", baseline_value=base, metrics=f,
        model=f"demo-small@{revision}", hardware=hardware.summary(hw), workload=w.describe(),
        precision="fp32", context=32, concurrency=1, seed=0,
        duration_s=round(time.perf_counter() - started, 2), percentile="p50")
    return report.finish(f"confidential / clear one-token chat p50: {ratio:.3f}", claim,
                         json_path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer samples of each")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    from aruntime.engine.default_model import DEMO, checked_model

    json_path(args)  # a directory is a usage error, before anything runs
    run_bench(checked_model(DEMO), QUICK if args.quick else FULL, json_path=args.json)
    return 0
