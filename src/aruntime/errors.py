"""Errors shared across packages, and how an error is told in one line. A leaf: it imports
nothing of ours, so any package may use it (the CLI reports a `UsageError`; it never defines it)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input on the command line: printed as one line, exit status 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def described(exc: BaseException) -> str:
    """`TypeName: message`, as a failure is recorded."""
    return f"{type(exc).__name__}: {exc}"
