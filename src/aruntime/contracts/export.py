"""The contracts' JSON Schemas (draft 2020-12), written by `aruntime schemas`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from aruntime.contracts.base import StrictModel
from aruntime.contracts.claim import ClaimRecord
from aruntime.contracts.decision import DecisionRecord
from aruntime.contracts.evidence import EvidenceRecord
from aruntime.contracts.request import RequestContract
from aruntime.contracts.run_evidence import RunEvidenceRecord
from aruntime.errors import UsageError

# ---- JSON Schema export and the `aruntime schemas` command --------------------------------------

CONTRACTS: dict[str, type[StrictModel]] = {
    "aruntime.request/v1": RequestContract,
    "aruntime.evidence/v1": EvidenceRecord,
    "aruntime.run-evidence/v1": RunEvidenceRecord,
    "aruntime.claim/v1": ClaimRecord,
    "aruntime.decision/v1": DecisionRecord,
}


def schema_document(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one contract, with `$id` and `title`."""
    doc = CONTRACTS[name].model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["$id"] = f"urn:aruntime:schema:{name}"
    doc["title"] = name
    return doc


def export_schemas(directory: Path) -> list[Path]:
    """Write one `<name with '/' as '.'>.json` per contract; the bytes depend only on the models."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CONTRACTS:
        path = directory / (name.replace("/", ".") + ".json")
        text = json.dumps(schema_document(name), indent=2, sort_keys=True, ensure_ascii=False)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)  # readers never see a half-written schema
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("schemas"), help="directory to write (default: ./schemas)"
    )


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a directory")
    for path in export_schemas(args.out):
        print(path)
    return 0
