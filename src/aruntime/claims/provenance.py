"""Where a registered claim comes from: the ARuntime commit that measured it, the baseline tool's
version, and the versions of the packages the figure depends on."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
from pathlib import Path

import aruntime
from aruntime.contracts import Source, SourceKind

# The packages whose upgrade can move a figure: the interpreter, ARuntime itself, the tensor
# library under both systems and the baseline's library.
DEPENDENCIES = ("python", "aruntime", "torch", "transformers")


def installed_versions(names: tuple[str, ...] = DEPENDENCIES) -> dict[str, str]:
    """The running environment's versions of `names`; a package that is not installed is left
    out (a claim that recorded it then shows the difference)."""
    found = {}
    for name in names:
        if name == "python":
            found[name] = platform.python_version()
            continue
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def runtime_source() -> Source:
    """ARuntime itself, at the commit of the checkout the running package comes from (the code
    that measured the figure), or at its version alone when it is not a git checkout."""
    package_dir = Path(aruntime.__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], package_dir)
    return Source(kind=SourceKind.REPOSITORY, name="aruntime", version=aruntime.__version__,
                  commit=commit)


def _project_url(distribution: str) -> str | None:
    try:
        meta = importlib.metadata.metadata(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    urls = [str(u).split(",", 1)[-1].strip() for u in meta.get_all("Project-URL") or []]
    urls += [str(meta["Home-page"])] if meta["Home-page"] else []
    # The repository is the most exact place to pin a version to; any web page will do else.
    ranked = sorted((u for u in urls if u.startswith(("https://", "http://"))),
                    key=lambda u: not u.startswith("https://github.com/"))
    return ranked[0] if ranked else None


def baseline_source(baseline_name: str) -> Source | None:
    """A benchmark names its baseline as `<tool> <version> <how it was run>` (e.g. `transformers
    5.24.0 generate, static batch 8`); the tool at that version is the baseline's source."""
    match = re.match(r"^([A-Za-z0-9_.-]+) v?(\d+(?:\.[0-9A-Za-z+-]+)+)\b", baseline_name)
    if match is None:
        return None
    tool, version = match.groups()
    url = _project_url(tool)
    kind = SourceKind.REPOSITORY if url and "github.com" in url else SourceKind.DOCUMENTATION
    return Source(kind=kind, name=tool, version=version, url=url)
