"""docs/ARCHITECTURE.md matches the tree: it lists every package under src/aruntime/, and every
package it lists exists; the seams it names are where it says."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "aruntime"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def listed_packages() -> set[str]:
    text = DOC.read_text()
    section = text.split("<!-- packages:begin -->", 1)[1].split("<!-- packages:end -->", 1)[0]
    return set(re.findall(r"^- `([a-z_/]+)/` — ", section, re.M))


def packages_in_tree() -> set[str]:
    return {str(init.parent.relative_to(SRC)) for init in SRC.rglob("__init__.py")
            if init.parent != SRC and "__pycache__" not in init.parts}


def test_every_package_is_listed_and_every_listed_package_exists() -> None:
    assert listed_packages() == packages_in_tree()


def test_the_seams_table_names_files_that_define_them() -> None:
    rows = re.findall(r"^\| `(\w+)` \| `([\w/]+\.py)` \|", DOC.read_text(), re.M)
    assert rows, "the seams table is where the doc says"
    for name, path in rows:
        assert re.search(rf"^class {name}\b", (SRC / path).read_text(), re.M), (name, path)
