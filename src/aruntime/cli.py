"""The `aruntime` command. Each subcommand lives in the module that owns it; imports are lazy
so that `aruntime --help` stays fast and a subcommand pulls in only what it needs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

# subcommand path -> (target, help). A target "pkg.module" defines `add_arguments(parser)` and
# `run(args)`; "pkg.module:name" defines `add_name_arguments(parser)` and `run_name(args)`, so one
# module can hold several related subcommands.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("serve",): ("aruntime.serve.launch", "start the OpenAI-compatible server"),
    ("demo-model",): ("aruntime.engine.demo", "write a random-weight demo checkpoint"),
    ("bench", "engine"): ("aruntime.bench.engine", "engine throughput against transformers"),
    ("bench", "cache"): ("aruntime.bench.cache", "KV tiers on the Mooncake conversation trace"),
    ("bench", "route"): ("aruntime.bench.route", "KV-aware routing over 4 colocated workers"),
    ("bench", "durable"): ("aruntime.bench.durable", "durable step overhead against LangGraph"),
    ("sim", "run"): ("aruntime.sim.cli:run", "simulate a cluster on a trace: goodput per policy"),
    ("sim", "calibrate"): ("aruntime.sim.cli:calibrate", "measure the engine's costs for sim"),
    ("schemas",): ("aruntime.contracts", "export the contracts' JSON Schemas"),
    ("claims", "check"): ("aruntime.claims.cli:check", "validate the claim registry and docs"),
    ("claims", "add"): ("aruntime.claims.cli:add", "register a benchmark's claim record"),
    ("claims", "review"): ("aruntime.claims.cli:review", "mark a claim reviewed now"),
    ("claims", "yank"): ("aruntime.claims.cli:yank", "yank a claim, keeping it with its reason"),
    ("claims", "due"): ("aruntime.claims.cli:due", "list claims that need re-review now"),
    ("claims", "render"): ("aruntime.claims.cli:render", "render README table and CHANGELOG"),
    ("evidence", "verify"): ("aruntime.evidence.cli:verify", "verify an evidence log"),
    ("evidence", "show"): ("aruntime.evidence.cli:show", "show one request's evidence"),
    ("run",): ("aruntime.agents.cli", "start a durable flow run (MODULE:FLOW)"),
    ("runs", "list"): ("aruntime.agents.cli:list", "list runs"),
    ("runs", "show"): ("aruntime.agents.cli:show", "show a run and its journal"),
    ("runs", "resume"): ("aruntime.agents.cli:resume", "resume a run from its journal"),
    ("runs", "recover"): ("aruntime.agents.cli:recover", "resume every interrupted run"),
    ("runs", "cancel"): ("aruntime.agents.cli:cancel", "cancel a run"),
    ("runs", "verify"): ("aruntime.agents.cli:verify", "verify a run's evidence chain"),
    ("runs", "approve"): ("aruntime.agents.cli:approve", "approve a tool call by its digest"),
    ("runs", "reject"): ("aruntime.agents.cli:reject", "reject a tool call awaiting approval"),
    ("runs", "respond"): ("aruntime.agents.cli:respond", "answer a human wait"),
    ("runs", "resolve"): ("aruntime.agents.cli:resolve", "settle a tool call of unknown outcome"),
    ("runs", "compact"): ("aruntime.agents.cli:compact", "drop a finished run's journal entries"),
    ("runs", "prune"): ("aruntime.agents.cli:prune", "delete finished runs past an age"),
    ("subjects", "erase"): ("aruntime.agents.cli:erase", "crypto-shred a subject everywhere"),
}


class UsageError(Exception):
    """Bad input on the command line: printed as one line, exit status 2."""


def _resolve(target: str, pattern: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    attr = pattern.format(f"{name}_" if pattern.startswith("add") and name else
                          f"_{name}" if name else "")
    return getattr(importlib.import_module(module), attr)


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
        p.set_defaults(_target=module)
        if list(path) == words[:len(path)]:
            _resolve(module, "add_{}arguments")(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(_resolve(args._target, "run{}")(args) or 0)
    except UsageError as exc:
        print(f"aruntime: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    from aruntime.cli import main as _main  # the package's module, so UsageError is one class

    sys.exit(_main())
