"""The contracts: the schema files match the models, bad input is refused with a message that
names the field, times are UTC with `Z`."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import aruntime
from aruntime import contracts
from aruntime.contracts import (
    ClaimRecord,
    EvidenceRecord,
    RequestContract,
    canonical_json,
    export_schemas,
    validation_message,
)
from aruntime.contracts import export as contracts_export
from aruntime.timeutil import parse_rfc3339, rfc3339, utc_now

REPO_SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def _request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "req-1",
        "kind": "completion",
        "model": "tiny-llama@sha256:0123456789abcdef",
        "inputs": {"prompt": "Hello"},
    }
    body.update(overrides)
    return body


def _claim(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "label": "production-implementation",
        "statement": "decode throughput on the tiny model",
        "metric": "output_tokens_per_s",
        "value": 1200.0,
        "unit": "tokens/s",
        "direction": "higher-is-better",
        "baseline": {"name": "transformers", "value": 400.0},
        "ratio": 3.0,
        "metrics": {"p50_ttft_ms": 12.5, "requests": 64, "note": "warm"},
        "model": "tiny-llama@sha256:" + "cd" * 32,
        "hardware": "cpu",
        "runtime_version": "0.1.0",
        "workload": "random 128/128",
        "precision": "float32",
        "context": 256,
        "concurrency": 8,
        "seed": 0,
        "duration_s": 10.0,
        "percentile": "p50",
        "measured_at": "2025-01-02T03:04:05Z",
        "raw_log_sha256": "ab" * 32,
    }
    body.update(overrides)
    return body


def _message(exc_info: pytest.ExceptionInfo[ValidationError]) -> str:
    return validation_message(exc_info.value)


# ---- schema files ---------------------------------------------------------------------------


def test_schema_files_match_models(tmp_path: Path) -> None:
    written = export_schemas(tmp_path)
    assert [p.name for p in written] == [
        "aruntime.request.v1.json",
        "aruntime.evidence.v1.json",
        "aruntime.run-evidence.v1.json",
        "aruntime.claim.v1.json",
        "aruntime.decision.v1.json",
    ]
    for path in written:
        committed = REPO_SCHEMAS / path.name
        assert committed.exists(), f"{committed} missing: run `aruntime schemas`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `aruntime schemas`"
        )


def test_schema_documents_are_self_describing(tmp_path: Path) -> None:
    for path in export_schemas(tmp_path):
        text = path.read_text(encoding="utf-8")
        assert text.endswith("}\n")
        doc = json.loads(text)
        name = doc["title"]
        assert doc["$id"] == f"urn:aruntime:schema:{name}"
        assert doc["properties"]["schema"]["const"] == name
        assert doc["additionalProperties"] is False
        assert path.name == name.replace("/", ".") + ".json"


def test_schemas_command_writes_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    contracts_export.add_arguments(parser)
    assert parser.parse_args([]).out == Path("schemas")
    assert contracts_export.run(parser.parse_args(["--out", str(tmp_path / "out")])) == 0
    printed = sorted(Path(p).name for p in capsys.readouterr().out.split())
    assert printed == sorted(p.name for p in REPO_SCHEMAS.glob("*.json"))


def test_schemas_command_refuses_a_file_as_out(tmp_path: Path) -> None:
    from aruntime.errors import UsageError

    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        contracts_export.run(argparse.Namespace(out=target))


# ---- request contract -----------------------------------------------------------------------


def test_request_defaults_and_round_trip() -> None:
    req = RequestContract.model_validate(_request(deadline="2025-01-02T03:04:05.5Z"))
    assert req.schema_ == "aruntime.request/v1"
    assert req.tenant == "default"
    assert req.model.name == "tiny-llama" and req.model.revision == "sha256:0123456789abcdef"
    assert str(req.model) == "tiny-llama@sha256:0123456789abcdef"
    assert req.deadline == datetime(2025, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    data = req.model_dump(mode="json")
    assert data["schema"] == "aruntime.request/v1"
    assert data["deadline"] == "2025-01-02T03:04:05.500000Z"
    assert RequestContract.model_validate(data) == req
    assert RequestContract.model_validate_json(req.model_dump_json()) == req


def test_request_accepts_chat_tokens_and_a_traceparent() -> None:
    chat = RequestContract.model_validate(
        _request(
            kind="chat",
            inputs={"messages": [{"role": "user", "content": "hi"}]},
            sampling={"temperature": 0.0, "stop": "END", "n": 2, "logprobs": 5},
            slo={"ttft_ms": 200, "tpot_ms": 30},
            confidentiality="attested",
            governance_tags=["pii:none", "eu-only"],
            trace_context="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            stream=True,
        )
    )
    assert chat.sampling.stop == ["END"]
    assert chat.confidentiality == "attested"
    tokens = RequestContract.model_validate(_request(inputs={"prompt_token_ids": [1, 2, 3]}))
    assert tokens.inputs.prompt_token_ids == [1, 2, 3]


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"kind": "translate"}, "kind", "'completion'"),
        ({"sampling": {"temperature": 3.0}}, "sampling.temperature", "less than or equal to 2"),
        ({"sampling": {"top_p": 0.0}}, "sampling.top_p", "greater than 0"),
        ({"sampling": {"max_tokens": 0}}, "sampling.max_tokens", "greater than or equal to 1"),
        ({"sampling": {"stop": [""]}}, "sampling.stop", "non-empty"),
        ({"sampling": {"temp": 1.0}}, "sampling.temp", "Extra inputs are not permitted"),
        ({"tenant": "a b"}, "tenant", "must be 1-64"),
        ({"id": "has space"}, "id", "whitespace"),
        ({"model": "a@b@c"}, "model.revision", "'@'"),
        ({"inputs": {}}, "inputs", "exactly one"),
        ({"inputs": {"prompt": "x", "messages": [{"role": "user"}]}}, "inputs", "got prompt"),
        ({"kind": "chat"}, "(body)", "chat request needs inputs.messages"),
        ({"deadline": "2025-01-02T03:04:05+00:00"}, "deadline", "must end in 'Z'"),
        ({"deadline": "2025-02-30T00:00:00Z"}, "deadline", "not a valid calendar time"),
        ({"trace_context": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}, "trace_context", "W3C"),
        ({"governance_tags": ["ok", ""]}, "governance_tags", "each tag must be"),
        ({"confidentiality": "secret"}, "confidentiality", "'attested'"),
        ({"slo": {"ttft_ms": -1}}, "slo.ttft_ms", "greater than 0"),
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
    ],
)
def test_request_rejects_bad_fields(overrides: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        RequestContract.model_validate(_request(**overrides))
    message = _message(exc_info)
    assert message.startswith(f"{field}: "), message
    assert words in message, message


def test_request_rejects_a_naive_deadline() -> None:
    with pytest.raises(ValidationError, match="naive datetime"):
        RequestContract.model_validate(_request(deadline=datetime(2025, 1, 2)))


def test_request_rejects_nan() -> None:
    with pytest.raises(ValidationError) as exc_info:
        RequestContract.model_validate(_request(sampling={"temperature": float("nan")}))
    assert _message(exc_info).startswith("sampling.temperature: ")


# ---- claim record ---------------------------------------------------------------------------


def test_claim_accepts_a_full_record() -> None:
    claim = ClaimRecord.model_validate(_claim())
    assert claim.model_dump(mode="json")["schema"] == "aruntime.claim/v1"
    assert claim.metrics["requests"] == 64


@pytest.mark.parametrize(
    "measured_at", ["2025-01-02T03:04:05", "2025-01-02T03:04:05+00:00", "2025-01-02 03:04:05Z"]
)
def test_claim_rejects_measured_at_without_z(measured_at: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        ClaimRecord.model_validate(_claim(measured_at=measured_at))
    assert _message(exc_info).startswith("measured_at: ")
    assert "must end in 'Z'" in _message(exc_info)


@pytest.mark.parametrize("digest", ["ab" * 31, "AB" * 32, "sha256:" + "ab" * 32, "zz" * 32])
def test_claim_rejects_a_bad_raw_log_sha256(digest: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        ClaimRecord.model_validate(_claim(raw_log_sha256=digest))
    assert _message(exc_info).startswith("raw_log_sha256: must be 64 lowercase hex")


def test_claim_rejects_a_bad_label() -> None:
    with pytest.raises(ValidationError) as exc_info:
        ClaimRecord.model_validate(_claim(label="marketing"))
    assert _message(exc_info).startswith("label: ")


# ---- evidence record ------------------------------------------------------------------------


def _evidence(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": "req-1",
        "tenant": "default",
        "model": "tiny-llama",
        "model_revision": "sha256:" + "12" * 32,
        "engine_version": "aruntime-engine/0.1.0",
        "hardware": "cpu",
        "precision": "float32",
    }
    body.update(overrides)
    return body


def test_evidence_record_defaults_and_hash_is_canonical() -> None:
    rec = EvidenceRecord.model_validate(_evidence())
    data = rec.model_dump(mode="json")
    assert data["schema"] == "aruntime.evidence/v1"
    assert data["created_at"].endswith("Z")
    assert data["runtime_version"] == aruntime.__version__
    # The hash depends on content, not key order or whitespace.
    shuffled = json.loads(json.dumps(dict(reversed(list(data.items()))), indent=4))
    assert contracts.evidence_hash(shuffled) == rec.compute_hash()
    assert rec.compute_hash() == contracts.sha256_digest(
        {k: v for k, v in data.items() if k not in ("hash", "signature")}
    )
    # The signature does not enter the hash; every other field does.
    assert rec.model_copy(update={"signature": "sig"}).compute_hash() == rec.compute_hash()
    assert rec.model_copy(update={"hardware": "h100"}).compute_hash() != rec.compute_hash()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model_revision": "main"}, "model_revision"),
        ({"hash": "sha256:abc"}, "hash"),
        ({"created_at": "2025-01-02T03:04:05"}, "created_at"),
        ({"usage": {"prompt_tokens": 4, "cached_tokens": 8}}, "usage"),
        ({"policy_decisions": [{"policy_version": "v1", "decision": "maybe"}]},
         "policy_decisions.0.decision"),
        ({"timings": {"ttft_s": -0.1}}, "timings.ttft_s"),
    ],
)
def test_evidence_record_rejects_bad_fields(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        EvidenceRecord.model_validate(_evidence(**overrides))
    assert _message(exc_info).startswith(f"{field}: "), _message(exc_info)


# ---- canonical JSON and time ------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": ["é", 1.5]}) == '{"a":["é",1.5],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("inf")})


def test_rfc3339_round_trip_and_strictness() -> None:
    now = utc_now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert parse_rfc3339(rfc3339(now)) == now
    plus_two = datetime(2025, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(plus_two) == "2025-01-02T03:04:05Z"
    assert parse_rfc3339("2025-01-02T03:04:05.123456789Z").microsecond == 123456
    with pytest.raises(ValueError, match="naive"):
        rfc3339(datetime(2025, 1, 2))
    with pytest.raises(ValueError, match="must end in 'Z'"):
        parse_rfc3339("2025-01-02T03:04:05+00:00")
