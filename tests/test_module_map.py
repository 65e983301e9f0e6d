"""The README's module map lists exactly the modules and packages of ``archiver/``."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _map_entries() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("The module map", 1)[1].split("```\n", 2)[1]
    entries, parents = set(), []
    for line in block.splitlines()[1:]:  # below the "archiver/" line
        m = re.match(r"( *)(\S+)", line)
        assert m, line
        depth = len(m.group(1)) // 2 - 1
        del parents[depth:]
        entries.add("/".join([*parents, m.group(2).rstrip("/")]))
        if m.group(2).endswith("/"):
            parents.append(m.group(2).rstrip("/"))
    return entries


def _code_entries() -> set[str]:
    pkg = ROOT / "archiver"
    found = set()
    for path in pkg.rglob("*"):
        rel = path.relative_to(pkg)
        if "__pycache__" in rel.parts or path.name in ("__init__.py", "__main__.py"):
            continue
        if path.is_dir() or path.suffix == ".py":
            if len(rel.parts) > 1 and rel.parts[0] == "schemas":
                continue
            found.add(rel.as_posix())
    return found


def test_the_readme_module_map_matches_the_package():
    listed, present = _map_entries(), _code_entries()
    assert listed - present == set(), "the README lists modules that do not exist"
    assert present - listed == set(), "modules missing from the README's module map"
