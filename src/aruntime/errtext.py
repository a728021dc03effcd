"""Errors told in one line, as the CLI and the logs tell them."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def described(exc: BaseException) -> str:
    """`TypeName: message`, as a failure is recorded."""
    return f"{type(exc).__name__}: {exc}"
