"""The `aruntime` command. Every subcommand is registered here, by name: its words, the module
that owns it, and the two functions there that add its arguments and run it. Modules are
imported lazily, so `aruntime --help` stays fast and a subcommand pulls in only what it needs.
No package imports this module; the errors a command reports live in `aruntime.errors`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aruntime.errors import UsageError


@dataclass(frozen=True, slots=True)
class Command:
    words: tuple[str, ...]
    module: str
    help: str
    add_arguments: str = "add_arguments"
    run: str = "run"

    def function(self, name: str) -> Callable[..., Any]:
        fn: Callable[..., Any] = getattr(importlib.import_module(self.module), name)
        return fn


def _word(group: str, module: str, word: str, help_text: str) -> Command:
    """`GROUP WORD`, whose module holds `add_WORD_arguments` and `run_WORD` (one module can hold
    several related subcommands)."""
    return Command((group, word), module, help_text, f"add_{word}_arguments", f"run_{word}")


def _runs(word: str, help_text: str) -> Command:
    return _word("runs", "aruntime.agents.cli", word, help_text)


def _claims(word: str, help_text: str) -> Command:
    return _word("claims", "aruntime.claims.cli", word, help_text)


COMMANDS: tuple[Command, ...] = (
    Command(("serve",), "aruntime.serve.launch", "start the OpenAI-compatible server"),
    Command(("demo-model",), "aruntime.engine.demo", "write a random-weight demo checkpoint"),
    Command(("bench", "engine"), "aruntime.bench.engine",
            "engine throughput against transformers"),
    Command(("bench", "cache"), "aruntime.bench.cache",
            "KV tiers on the Mooncake conversation trace"),
    Command(("bench", "route"), "aruntime.bench.route",
            "KV-aware routing over 4 colocated workers"),
    Command(("bench", "durable"), "aruntime.bench.durable",
            "durable step overhead against LangGraph"),
    Command(("bench", "grammar"), "aruntime.bench.grammar",
            "grammar engines' per-token mask cost: llguidance against xgrammar"),
    Command(("bench", "structured"), "aruntime.bench.structured",
            "decode throughput with a JSON-schema constraint against none"),
    Command(("bench", "policy"), "aruntime.bench.policy",
            "policy decisions' cost: cached, uncached, against re-parsing the policy"),
    Command(("bench", "backends"), "aruntime.bench.backends",
            "the dense parts per backend and phase; the engine with auto against eager"),
    Command(("bench", "realtime"), "aruntime.bench.realtime",
            "a 1 kHz loop's lateness beside the engine, with control, against a naive loop"),
    Command(("bench", "parallel"), "aruntime.bench.parallel",
            "the engine sharded over tensor-parallel ranks against one: compute, communication"),
    Command(("bench", "confidential"), "aruntime.bench.confidential",
            "attestation handshake, seal/open per KiB, a sealed chat against one in clear"),
    _word("sim", "aruntime.sim.cli", "run", "simulate a cluster on a trace: goodput per policy"),
    _word("sim", "aruntime.sim.cli", "calibrate", "measure the engine's costs for sim"),
    Command(("schemas",), "aruntime.contracts.export", "export the contracts' JSON Schemas"),
    _claims("check", "validate the claim registry and docs"),
    _claims("add", "register a benchmark's claim record"),
    _claims("review", "mark a claim reviewed now"),
    _claims("yank", "yank a claim, keeping it with its reason"),
    _claims("due", "list claims that need re-review now"),
    _claims("render", "render README table and CHANGELOG"),
    _word("evidence", "aruntime.evidence.cli", "verify", "verify an evidence log"),
    _word("evidence", "aruntime.evidence.cli", "show", "show one request's evidence"),
    Command(("run",), "aruntime.agents.cli", "start a durable flow run (MODULE:FLOW)"),
    _runs("list", "list runs"),
    _runs("show", "show a run and its journal"),
    _runs("resume", "resume a run from its journal"),
    _runs("recover", "resume every interrupted run"),
    _runs("cancel", "cancel a run"),
    _runs("verify", "verify a run's evidence chain"),
    _runs("approve", "approve a tool call by its digest"),
    _runs("reject", "reject a tool call awaiting approval"),
    _runs("respond", "answer a human wait"),
    _runs("resolve", "settle a tool call of unknown outcome"),
    _runs("compact", "drop a finished run's journal entries"),
    _runs("prune", "delete finished runs past an age"),
    _word("subjects", "aruntime.agents.cli", "erase", "crypto-shred a subject everywhere"),
    _word("keys", "aruntime.policy.keys_cli", "create", "create an API key (printed once)"),
    _word("keys", "aruntime.policy.keys_cli", "list", "list API keys (never their secrets)"),
    _word("keys", "aruntime.policy.keys_cli", "revoke", "revoke an API key"),
    _word("attest", "aruntime.confidential.cli", "check",
          "appraise a server's boundary; exit 2 naming the claim that failed"),
    Command(("attest", "policy", "example"), "aruntime.confidential.cli",
            "print an appraisal policy", "add_example_arguments", "run_example"),
    _word("kbs", "aruntime.confidential.kbs_cli", "serve",
          "a key broker (RCAR): resources released as JWEs to attested keys"),
    Command(("seal-model",), "aruntime.serve.seal_model_cli", "seal a checkpoint's weights "
            "under a key only the key broker keeps", "add_arguments", "run"),
    Command(("verifier", "serve"), "aruntime.confidential.kbs_cli",
            "the verifier as a service: nonces, appraisals, signed EARs",
            "add_verifier_arguments", "run_verifier"),
    Command(("chat",), "aruntime.confidential.cli", "chat with a server, sealed to its "
            "attested key", "add_chat_arguments", "run_chat"),
    _word("release", "aruntime.adapt.release_cli", "add", "add a release (signed provenance)"),
    _word("release", "aruntime.adapt.release_cli", "list", "list releases"),
    _word("release", "aruntime.adapt.release_cli", "show", "a release's versions and aliases"),
    _word("release", "aruntime.adapt.release_cli", "verify", "verify provenance and content"),
    _word("release", "aruntime.adapt.release_cli", "alias", "move an alias to a version"),
    _word("release", "aruntime.adapt.release_cli", "served", "what served a name at an instant"),
    _word("rollout", "aruntime.adapt.rollout_cli", "start", "start a canary or shadow rollout"),
    _word("rollout", "aruntime.adapt.rollout_cli", "status", "rollouts, their steps and analysis"),
    _word("rollout", "aruntime.adapt.rollout_cli", "approve", "approve a promotion by digest"),
    _word("rollout", "aruntime.adapt.rollout_cli", "abort", "send all traffic back to stable"),
    _word("rollout", "aruntime.adapt.rollout_cli", "promote", "skip the remaining steps"),
    _word("backends", "aruntime.engine.backends.cli", "list",
          "the model backends this machine has, and what the others lack"),
    _word("backends", "aruntime.engine.backends.cli", "calibrate",
          "time the backends that pass the gate, per phase and bucket"),
    _word("policy", "aruntime.policy.cli", "check", "parse and validate a policy bundle"),
    _word("policy", "aruntime.policy.cli", "test", "run a table of expected decisions"),
    _word("policy", "aruntime.policy.cli", "explain", "explain one decision"),
    _word("policy", "aruntime.policy.cli", "sign", "sign a policy bundle (Ed25519)"),
)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Only the chosen subcommand's module is imported (its arguments are needed); the others
    are listed by name and help alone."""
    words = [w for w in argv if not w.startswith("-")]
    parser = argparse.ArgumentParser(prog="aruntime", description="ARuntime command line")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[tuple[str, ...], Any] = {}
    for command in COMMANDS:
        target = sub
        for depth in range(1, len(command.words)):
            prefix, word = command.words[:depth], command.words[depth - 1]
            if prefix not in groups:  # `attest policy example`: groups nest
                groups[prefix] = target.add_parser(word, help=f"{word} commands") \
                    .add_subparsers(dest=f"{'_'.join(prefix)}_command", required=True)
            target = groups[prefix]
        p = target.add_parser(command.words[-1], help=command.help)
        p.set_defaults(_command=command)
        if list(command.words) == words[:len(command.words)]:
            command.function(command.add_arguments)(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    command: Command = args._command
    try:
        return int(command.function(command.run)(args) or 0)
    except UsageError as exc:
        print(f"aruntime: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
