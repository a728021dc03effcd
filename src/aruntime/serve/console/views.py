"""What each view of the console shows, as JSON built from the running server's own state:
the pool's workers and recent routes (cluster), the traffic window (serve/traffic.py), the
policy in force and its recent decisions (serve/recent_decisions.py), the claims due for
review, and a verification of the server's evidence logs. Runs, releases and rollouts are read
from their own APIs (/v1/runs, /v1/releases, /v1/rollouts), which the page calls directly."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from aruntime.cluster.serving import RouteRecord, WorkerNow
from aruntime.engine.outputs import EngineStats
from aruntime.serve.state import ServerState
from aruntime.timeutil import rfc3339

ROUTES_SHOWN = 50
LOGS = {"requests": "evidence.jsonl", "decisions": "decisions.jsonl"}


def _engine(s: EngineStats | None) -> dict[str, Any] | None:
    if s is None:
        return None
    tiers = [{"tier": t.tier, "hits": t.hits, "misses": t.misses, "evictions": t.evictions,
              "stored_bytes": t.stored_bytes,
              "hit_rate": round(t.hits / (t.hits + t.misses), 4) if t.hits + t.misses else None}
             for t in s.tiers]
    return {"running": s.num_running, "waiting": s.num_waiting, "kv_usage": round(s.kv_usage, 4),
            "device_blocks": s.num_blocks, "device_blocks_used": s.num_blocks - s.num_free_blocks,
            "prefix_hit_rate": (round(s.prefix_hit_tokens_total / s.prefix_query_tokens_total, 4)
                                if s.prefix_query_tokens_total else None),
            "prompt_tokens": s.prompt_tokens_total, "generation_tokens": s.generation_tokens_total,
            "tier_hit_tokens": s.tier_hit_tokens_total, "rank_restarts": s.rank_restarts_total,
            "tiers": tiers}


def _worker(w: WorkerNow) -> dict[str, Any]:
    return {"worker_id": w.worker_id, "role": w.role, "placement": w.placement, "pid": w.pid,
            "alive": w.alive, "load": asdict(w.load), "engine": _engine(w.stats)}


def _route(r: RouteRecord) -> dict[str, Any]:
    return {"request_id": r.request_id, "worker": r.worker, "at": r.at,
            "predicted_cached_tokens": r.predicted_cached_tokens,
            "cached_tokens_used": r.cached_tokens_used, "attempts": r.attempts}


async def cluster(state: ServerState) -> dict[str, Any]:
    pool = state.client
    workers = await pool.workers_now()
    return {"model": state.model_name, "revision": state.info.revision,
            "router_policy": getattr(pool, "policy", None),
            "workers": [_worker(w) for w in workers],
            "routes": [_route(r) for r in pool.recent_routes(ROUTES_SHOWN)]}


def policy(state: ServerState) -> dict[str, Any]:
    a = state.authorizer
    return {"version": a.version, "signature": getattr(a, "signature", "builtin"),
            "mode": str(getattr(a, "mode", "enforce")), **state.recent_decisions.view()}


def claims(root: Path, now: datetime) -> dict[str, Any]:
    """The claims under `root`/claims and those due for review at `now`; a registry that
    cannot be read is reported, never raised (the console still shows the rest)."""
    from aruntime.claims import lifecycle
    from aruntime.claims.registry import Registry, RegistryError

    try:
        records = Registry(root).records()
    except RegistryError as exc:
        return {"root": str(root), "claims": [], "due": [], "error": str(exc)}
    listed = [{"id": r.id, "statement": r.statement, "status": str(r.status),
               "metric": r.metric, "value": r.value, "unit": r.unit,
               "review_by": rfc3339(r.review_by) if r.review_by else None} for r in records]
    due = [{"id": r.id, "why": why} for r, why in lifecycle.due(records, now)]
    return {"root": str(root), "claims": listed, "due": due, "error": None}


def verify_log(state: ServerState, log: str) -> dict[str, Any]:
    """Check one of the server's signed logs end to end, against the server's own key."""
    from aruntime.contracts import DecisionRecord, EvidenceRecord
    from aruntime.evidence.log import verify

    path = state.data_dir / LOGS[log]
    if not path.exists():
        return {"log": log, "ok": False, "records": 0, "errors": [f"{path.name}: no records yet"]}
    contract = EvidenceRecord if log == "requests" else DecisionRecord
    got = verify(path, state.signer.public_key, contract=contract)
    return {"log": log, "ok": got.ok, "records": got.count, "signed": got.signed,
            "errors": got.errors[:20], "head": got.head, "key_id": got.key_id}
