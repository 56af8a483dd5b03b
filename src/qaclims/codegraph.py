"""The library files a workflow script depends on: its transitive imports inside ``qaclims``.

A rule's ``code`` input is this list, so editing any module a stage imports (directly or
through another module, at module level or inside a function) reruns that stage, and
nothing else does. Standard library only, so the Snakefile can use it at parse time.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "qaclims"


def _module_file(src: Path, module: str) -> Path | None:
    """``src/qaclims/a/b.py`` or ``src/qaclims/a/b/__init__.py`` for ``qaclims.a.b``."""
    base = src.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imported_modules(path: Path) -> set[str]:
    """``qaclims`` modules named by the import statements of one file (any nesting)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == PACKAGE:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}  # submodules
    return found


@cache
def _closure(src: Path, start: Path) -> frozenset[Path]:
    seen: set[Path] = set()
    todo = [start]
    while todo:
        f = todo.pop()
        for mod in _imported_modules(f):
            parts = mod.split(".")
            # a module's parent packages run too (their __init__.py)
            for i in range(1, len(parts) + 1):
                mf = _module_file(src, ".".join(parts[:i]))
                if mf is not None and mf not in seen:
                    seen.add(mf)
                    todo.append(mf)
    return frozenset(seen)


def library_files(script: str | Path, src: str | Path) -> list[str]:
    """Sorted paths of the ``qaclims`` files ``script`` imports, transitively.

    ``src`` is the folder holding the ``qaclims`` package (the repository's ``src/``).
    """
    return sorted(str(p) for p in _closure(Path(src).resolve(), Path(script).resolve()))
