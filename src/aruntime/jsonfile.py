"""A JSON file that must hold an object, read one way: every failure is the caller's error
class with the path in its message (a checkpoint's config, a policy file, a release)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_object(path: Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None
    return json_object(data, str(path), error)


def json_object(data: bytes, where: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """`data` (bytes already read, e.g. verified) as a JSON object."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise error(f"{where} must hold a JSON object")
    return value
