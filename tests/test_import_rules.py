"""The planes' import rules, read from the source (function-level imports included): what each
package may never import. Breaking one is a design change, argued in docs/ARCHITECTURE.md first,
not a line slipped into a module."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "aruntime"

# package -> packages it must never import
FORBIDDEN = {
    # a loop's board is the engine's (engine/loop_board.py): the loop writes it
    "engine": ("serve", "cluster", "agents", "realtime"),
    "kv": ("engine", "serve", "cluster"),
    "durable": ("engine", "serve", "cluster"),
    "evidence": ("engine", "serve", "cluster"),
    "governance": ("engine", "serve", "cluster"),
    # the decision point calls policy/; policy/ never reaches back into what it guards
    "policy": ("engine", "serve", "cluster", "agents"),
    "confidential": ("engine", "serve", "cluster", "agents"),
    # releases and rollouts: the serve plane calls them; they read checkpoints (engine/loader)
    "adapt": ("serve", "cluster", "agents"),
    # real-time loops run beside the serving planes, never through them
    "realtime": ("serve", "cluster", "agents"),
}
# contracts/ is a leaf: besides itself, only these helpers of ours
CONTRACTS_MAY_IMPORT = ("aruntime", "aruntime.timeutil", "aruntime.errors")  # and __version__
# agents/ reaches models only through the engine client: these engine modules and no other
AGENTS_MAY_IMPORT_FROM_ENGINE = (
    "aruntime.engine.client",  # the seam
    "aruntime.engine.core_client",  # its in-process transport, for `aruntime run`
    "aruntime.engine.sampling",  # the client's request parameters
    "aruntime.engine.config",  # what the in-process client is started with
    "aruntime.engine.tokenizer",  # prompts to token ids and back
    "aruntime.engine.default_model",  # what --model names: the default model, the demo, a path
)


def modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def imported(path: Path, root: Path = SRC.parent) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in `path` (a module under `root`), resolved to absolute
    names; `from a import b` yields a.b as well as a, since b may be a module."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join((*package[:len(package) - node.level + 1], base)).strip(".")
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def ours(name: str) -> bool:
    return name == "aruntime" or name.startswith("aruntime.")


def under(name: str, package: str) -> bool:
    return name == f"aruntime.{package}" or name.startswith(f"aruntime.{package}.")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_plane_never_imports_the_ones_above_it(package: str) -> None:
    broken = [f"{path.relative_to(SRC)}:{line} imports {name}"
              for path in modules(package) for line, name in imported(path)
              if any(under(name, other) for other in FORBIDDEN[package])]
    assert broken == [], "\n".join(broken)


def leaf(name: str) -> bool:
    """The package's own version, or a leaf helper module (or a name in one)."""
    return name in ("aruntime", "aruntime.__version__") or any(
        name == m or name.startswith(f"{m}.") for m in CONTRACTS_MAY_IMPORT[1:])


def test_contracts_import_only_leaf_helpers() -> None:
    broken = [f"{path.relative_to(SRC)}:{line} imports {name}"
              for path in modules("contracts") for line, name in imported(path)
              if ours(name) and not under(name, "contracts") and not leaf(name)]
    assert broken == [], "\n".join(broken)


def test_agents_reach_models_only_through_the_engine_client() -> None:
    broken = [f"{path.relative_to(SRC)}:{line} imports {name}"
              for path in modules("agents") for line, name in imported(path)
              if under(name, "engine") and name != "aruntime.engine"
              and not any(name == m or name.startswith(f"{m}.")
                          for m in AGENTS_MAY_IMPORT_FROM_ENGINE)]
    assert broken == [], "\n".join(broken)


def test_no_package_imports_the_command_line() -> None:
    broken = [f"{path.relative_to(SRC)}:{line} imports {name}"
              for path in sorted(SRC.rglob("*.py")) if path != SRC / "cli.py"
              for line, name in imported(path) if name == "aruntime.cli"
              or name.startswith("aruntime.cli.")]
    assert broken == [], "\n".join(broken)


def test_the_rules_see_what_they_police(tmp_path: Path) -> None:
    """The reader resolves relative and lazy imports: a rule cannot pass by not looking."""
    probe = tmp_path / "aruntime" / "engine" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f() -> None:\n"
                     "    from ..cluster import pool\n"
                     "    import aruntime.serve\n")
    names = {name for _, name in imported(probe, tmp_path)}
    assert {"aruntime.cluster.pool", "aruntime.serve"} <= names
    assert any(under(n, "cluster") for n in names) and not leaf("aruntime.engine.client")
