"""The `aruntime` command. Each subcommand lives in the module that owns it; imports are lazy
so that `aruntime --help` stays fast and a subcommand pulls in only what it needs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand path -> (module, help). The module defines `add_arguments(parser)` and `run(args)`.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("serve",): ("aruntime.serve.launch", "start the OpenAI-compatible server"),
    ("demo-model",): ("aruntime.engine.demo", "write a random-weight demo checkpoint"),
    ("bench", "engine"): ("aruntime.bench.engine", "engine throughput against transformers"),
    ("schemas",): ("aruntime.contracts", "export the contracts' JSON Schemas"),
}


class UsageError(Exception):
    """Bad input on the command line: printed as one line, exit status 2."""


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Only the chosen subcommand's module is imported (its arguments are needed); the others
    are listed by name and help alone."""
    words = [w for w in argv if not w.startswith("-")]
    parser = argparse.ArgumentParser(prog="aruntime", description="ARuntime command line")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, (module, help_text) in COMMANDS.items():
        target = sub
        for word in path[:-1]:
            if word not in groups:
                groups[word] = sub.add_parser(word, help=f"{word} commands").add_subparsers(
                    dest=f"{word}_command", required=True)
            target = groups[word]
        p = target.add_parser(path[-1], help=help_text)
        p.set_defaults(_module=module)
        if list(path) == words[:len(path)]:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UsageError as exc:
        print(f"aruntime: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    from aruntime.cli import main as _main  # the package's module, so UsageError is one class

    sys.exit(_main())
