"""The bounds hostile input meets before any parser or tokenizer: the streamed JSON depth and
container count (serve/json_shape.py) against Python's own parse, the bytes bound on a prompt's
tokens (serve/prompt_bound.py) against the tokenizer's count, a tokenizer that lets other
threads run while it works, and a body that stalls answered 408 (serve/limits.py)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import raw_http
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aruntime.engine.tokenizer import Tokenizer
from aruntime.serve.json_shape import JsonShape, JsonShapeError
from aruntime.serve.launch import BackgroundServer
from aruntime.serve.limits import RequestLimits
from aruntime.serve.prompt_bound import longest_token_bytes

TRICKY = st.sampled_from(['"', "\\", "[", "]", "{", "}", "é", "\U0001f600", "a", "\n"])
JSON_VALUES = st.recursive(
    st.none() | st.integers() | st.text(TRICKY, max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(TRICKY, max_size=4),
                                                                inner, max_size=4),
    max_leaves=30)


def depth_and_count(value: Any) -> tuple[int, int]:
    if isinstance(value, list | dict):
        inner = [depth_and_count(v) for v in (value.values() if isinstance(value, dict)
                                              else value)]
        return 1 + max((d for d, _ in inner), default=0), 1 + sum(c for _, c in inner)
    return 0, 0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(JSON_VALUES, st.booleans(), st.lists(st.integers(1, 9), min_size=1, max_size=8))
def test_json_shape_matches_the_parsed_value(value: Any, ascii_only: bool,
                                              cuts: list[int]) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    depth, count = depth_and_count(value)
    exact, tight = JsonShape(depth, count), JsonShape(max(depth - 1, 0), count)
    chunks, i = [], 0
    for n in cuts * (len(text) // sum(cuts) + 1):  # the same text, cut anywhere
        chunks.append(text[i:i + n])
        i += n
    for chunk in chunks:
        exact.feed(chunk)
    assert exact.depth == 0 and exact.containers == count
    if depth:
        with pytest.raises(JsonShapeError, match="deeper"):
            for chunk in chunks:
                tight.feed(chunk)


def test_json_shape_counts_containers_and_escapes_across_chunks() -> None:
    shape = JsonShape(max_depth=3, max_containers=3)
    for chunk in (b'["a\\', b'"[[[[\\\\', b'", [], {"k": "\\\\\\', b'"]"}]'):
        shape.feed(chunk)  # every bracket but the outer three is inside a string
    assert shape.depth == 0 and shape.containers == 3
    with pytest.raises(JsonShapeError, match="more than 3"):
        shape.feed(b"[]")


# ---- the bytes bound on a prompt's tokens ------------------------------------------------------


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_path(tiny_model_dir)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=40) | st.sampled_from(["<|im_start|>", "<|endoftext|>", " ",
                                                        "\n" * 9, "  " * 20, "Ġ"]),
                max_size=12).map("".join))
def test_no_text_makes_fewer_tokens_than_its_bytes_bound(tok: Tokenizer, text: str) -> None:
    longest = longest_token_bytes(tok)
    assert longest is not None
    size = len(text.encode())
    assert len(tok.encode(text, add_special_tokens=False)) >= -(-size // longest)


def _tokenizer(**parts: Any) -> Tokenizer:
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={"a": 0, "<unk>": 1}, merges=[],
                                                         unk_token="<unk>"))
    for name, part in parts.items():
        setattr(backend, name, part)
    return Tokenizer(backend)


def test_no_bound_where_the_pipeline_may_drop_or_shrink_text() -> None:
    assert longest_token_bytes(_tokenizer()) == 5  # "<unk>", at least a character's 4 bytes
    assert longest_token_bytes(_tokenizer(normalizer=tokenizers.normalizers.NFC())) is None
    assert longest_token_bytes(_tokenizer(normalizer=tokenizers.normalizers.Strip())) is None
    assert longest_token_bytes(_tokenizer(
        pre_tokenizer=tokenizers.pre_tokenizers.Whitespace())) is None
    truncating = _tokenizer()
    truncating.backend.enable_truncation(8)
    assert longest_token_bytes(truncating) is None
    swallowing = _tokenizer()
    swallowing.backend.add_special_tokens([tokenizers.AddedToken("<m>", lstrip=True)])
    assert longest_token_bytes(swallowing) is None


def test_encoding_lets_other_threads_run(tok: Tokenizer) -> None:
    """With no forced switches of the GIL, this thread runs while another encodes only if the
    tokenizer releases the GIL (an API server's event loop is such a thread)."""
    text = "the sea and the sky, " * 20_000
    started, done = threading.Event(), threading.Event()
    ran_while_encoding: list[bool] = []

    def encode() -> None:
        started.set()
        tok.encode(text)
        done.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    try:
        worker = threading.Thread(target=encode)
        worker.start()
        started.wait(30)
        ran_while_encoding.append(not done.is_set())
        worker.join(30)
    finally:
        sys.setswitchinterval(old)
    assert ran_while_encoding == [True]


# ---- a body that stalls -----------------------------------------------------------------------


@pytest.fixture()
def echo_server() -> Iterator[BackgroundServer]:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    app = RequestLimits(Starlette(routes=[Route("/", echo, methods=["POST"])]), body_idle_s=0.2)
    with BackgroundServer(app) as server:
        yield server


def test_a_stalled_body_is_408(echo_server: BackgroundServer) -> None:
    with raw_http.connect(echo_server.host, echo_server.port) as sock:
        sock.sendall(raw_http.head("/", "Content-Length: 10") + b"{}")
        status, body = raw_http.read_response(sock)  # once the server gives up waiting
        assert status == 408 and body["error"]["type"] == "invalid_request_error"
    with raw_http.connect(echo_server.host, echo_server.port) as sock:
        sock.sendall(raw_http.head("/", "Content-Length: 2") + b"{}")
        assert raw_http.read_response(sock) == (200, {"bytes": 2})
