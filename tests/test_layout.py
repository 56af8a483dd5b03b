"""The library's layout: stage packages import the shared homes, never each other; shared
homes never import a stage; modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "qaclims"
STAGES = {"qape", "cam", "ritc", "refine", "seg", "report"}
#: ``data`` and ``evaluation`` hold stages too (dataset, synthetic; eval_labels), but also what
#: every family reads (the manifest, augmentation; metrics and GT scoring), so they are shared
SHARED = {"core", "artifacts", "training", "models", "data", "evaluation"}
GLUE = {"workflow"}  # imports anything: it runs the stages


def _imports(path: Path) -> set[str]:
    """Top-level ``qaclims`` packages a module imports (any depth, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "qaclims" and len(parts) > 1 and (SRC / parts[1]).is_dir():
                found.add(parts[1])
    return found


MODULES = sorted(p for p in SRC.rglob("*.py"))


def test_every_module_lives_in_a_known_package() -> None:
    top = {p.relative_to(SRC).parts[0] for p in MODULES if len(p.relative_to(SRC).parts) > 1}
    assert top == STAGES | SHARED | GLUE
    loose = [p.name for p in MODULES if p.parent == SRC]
    assert loose == ["__init__.py"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_packages_import_only_what_their_kind_may(path: Path) -> None:
    own = path.relative_to(SRC).parts[0]
    if own in GLUE or path.parent == SRC:
        return
    imported = _imports(path) - {own}
    if own in STAGES:
        assert imported <= SHARED, f"{own} imports the stage package(s) {imported - SHARED}"
    else:
        assert imported <= SHARED, f"shared home {own} imports {imported - SHARED}"
