"""What a release is of: five kinds of artifact, each checked for what it must be and named by
the digest of its content. A model's version is its checkpoint revision (engine/loader.py's),
so a request's evidence and the registry name a model the same way; any other kind's is the
digest of its file, or of a directory's (name, sha256) pairs."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from aruntime.adapt.retrieval import Retriever
from aruntime.engine.loader import file_sha256, revision_digest
from aruntime.jsonfile import json_object
from aruntime.route_policy import RoutePolicy

MAX_PROMPT_BYTES = 64 * 1024
T = TypeVar("T")


class Kind(StrEnum):
    MODEL = "model"
    PROMPT = "prompt"  # a system prompt set before a request's messages
    ROUTE = "route"  # the router's policy and weights
    RETRIEVAL = "retrieval"  # a retrieval config
    POLICY = "policy"  # a Cedar bundle


class ReleaseError(ValueError):
    """A release that cannot be added, found, verified or moved; the message says which."""


class UnknownRelease(ReleaseError):
    """No such release, version, alias or rollout."""


def content_digest(kind: Kind, path: Path) -> str:
    if kind is Kind.MODEL:
        from aruntime.engine.loader import CheckpointError, load_checkpoint

        try:
            return load_checkpoint(path).revision
        except CheckpointError as exc:
            raise ReleaseError(str(exc)) from None
    if path.is_file():
        return "sha256:" + file_sha256(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return revision_digest(path, files)
    raise ReleaseError(f"{path}: no such file or directory")


def check_artifact(kind: Kind, path: Path) -> None:
    """ReleaseError when `path` is not what a release of `kind` holds."""
    if kind is Kind.MODEL:
        content_digest(kind, path)
    elif kind is Kind.PROMPT:
        prompt_text(path)
    elif kind is Kind.ROUTE:
        decode_route(_read(path), str(path))
    elif kind is Kind.RETRIEVAL:
        decode_retrieval(_read(path), str(path))
    else:
        from aruntime.policy.bundle import load_bundle
        from aruntime.policy.cedar_authorizer import PolicyError

        try:
            load_bundle(path)
        except (PolicyError, OSError) as exc:
            raise ReleaseError(f"{path}: not a policy bundle: {exc}") from None


def decode_route(data: bytes, where: str) -> RoutePolicy:
    """A route release's router policy and weights; ReleaseError when they are not one."""
    return _parsed(RoutePolicy.from_json, data, where)


def decode_retrieval(data: bytes, where: str) -> Retriever:
    """A retrieval release's documents, indexed; ReleaseError when it is not one."""
    return _parsed(Retriever.from_json, data, where)


def _parsed(parse: Callable[[dict[str, Any]], T], data: bytes, where: str) -> T:
    """A JSON release's object, parsed; its parser's ValueError as a ReleaseError."""
    config = json_object(data, where, ReleaseError)
    try:
        return parse(config)
    except ValueError as exc:
        raise ReleaseError(f"{where}: {exc}") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"{path}: {exc.strerror or exc}") from None


def prompt_text(path: Path) -> str:
    return decode_prompt(_read(path), str(path))


def decode_prompt(data: bytes, where: str) -> str:
    """A prompt release's bytes as its text; ReleaseError when they are not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReleaseError(f"{where}: a prompt release is a UTF-8 text file: {exc}") from None
    if not text.strip() or len(data) > MAX_PROMPT_BYTES:
        raise ReleaseError(f"{where}: a prompt is 1 to {MAX_PROMPT_BYTES} bytes of text")
    return text


def short(version: str) -> str:
    """`sha256:1a2b3c4d5e6f`: how tables print a version (prefixes resolve back to it)."""
    return version[:19]
