"""What code imports: the third-party modules a set of files imports (static, by AST) and
the installed distributions that provide them (tests/test_envs.py, tests/test_benchmarks.py)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def _optional(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``try: ... except ImportError`` (optional imports)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if caught & {"ImportError", "ModuleNotFoundError"}:
                out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def imports_of(files: list[str]) -> set[str]:
    """Top-level third-party modules the files import anywhere (lazy imports included, those
    guarded by ``except ImportError`` left out)."""
    std = set(sys.stdlib_module_names) | {"__future__", "qaclims"}
    mods: set[str] = set()
    for f in files:
        tree = ast.parse(Path(f).read_text())
        optional = _optional(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module.split(".")[0])
    return mods - std


def distributions(modules: set[str]) -> set[str]:
    """Distribution names (lower case) that provide ``modules`` in the project's venv."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    missing = sorted(m for m in modules if m not in dists)
    assert not missing, f"no installed distribution provides {missing}"
    return {d.lower().replace("_", "-") for m in modules for d in dists[m]}
