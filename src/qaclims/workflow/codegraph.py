"""The library files a workflow script depends on: its transitive imports inside ``qaclims``.

A rule's ``code`` param is :func:`code_digests` of this list (each file's content digest),
so editing any module a stage imports (directly or through another module, at module level
or inside a function) reruns that stage, and nothing else does; touching a file, a ``git
checkout`` that restores its content, or moving the checkout reruns nothing. A param, not
inputs: 20 library files per job were most of the DAG's edges. Standard library only, so
the Snakefile can use it at parse time.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import cache
from pathlib import Path

PACKAGE = "qaclims"


@cache
def _module_file(src: Path, module: str) -> Path | None:
    """``src/qaclims/a/b.py`` or ``src/qaclims/a/b/__init__.py`` for ``qaclims.a.b``."""
    base = src.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


_SCAN_CACHE: dict[str, list[object]] = {}
_SCAN_FILE: list[Path] = []
_DIRTY: list[bool] = []


def use_scan_cache(path: str | Path) -> None:
    """Keep the import scans of unchanged files (same size and mtime) in the JSON file
    ``path`` across processes: parsing ~60 modules is most of the Snakefile's parse time.
    A stale or unreadable cache is ignored; writes are atomic (rename)."""
    p = Path(path)
    _SCAN_FILE[:] = [p]
    try:
        data = json.loads(p.read_text())
        if isinstance(data, dict):
            _SCAN_CACHE.update(data)
    except (OSError, ValueError):
        pass


def save_scan_cache() -> None:
    """Write the scan cache chosen by :func:`use_scan_cache` if a file was scanned anew."""
    if not _SCAN_FILE or not _DIRTY:
        return
    p = _SCAN_FILE[0]
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(_SCAN_CACHE, sort_keys=True))
        os.replace(tmp, p)
    except OSError:
        tmp.unlink(missing_ok=True)


@cache
def _imported_modules(path: Path) -> frozenset[str]:
    """``qaclims`` modules named by the import statements of one file (any nesting).

    Parsed once per process, and across processes through :func:`use_scan_cache`."""
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    hit = _SCAN_CACHE.get(str(path))
    if isinstance(hit, list) and len(hit) == 3 and hit[:2] == stamp and isinstance(hit[2], list):
        return frozenset(str(m) for m in hit[2])
    found = _scan(path)
    _SCAN_CACHE[str(path)] = [*stamp, sorted(found)]
    _DIRTY[:] = [True]
    return found


LAUNCHERS = ("run_rule",)  # qaclims.workflow.launch: the stage module is named, not imported


def _scan(path: Path) -> frozenset[str]:
    """Modules named by import statements, and the stage module a training script hands to
    ``launch.run_rule(snakemake, "qaclims....")`` (its worker process imports it)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in LAUNCHERS:
                found |= {
                    a.value
                    for a in node.args
                    if isinstance(a, ast.Constant)
                    and isinstance(a.value, str)
                    and a.value.split(".")[0] == PACKAGE
                }
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == PACKAGE:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}  # submodules
    return frozenset(found)


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


@cache
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def code_digests(script: str | Path, src: str | Path) -> dict[str, str]:
    """``{path relative to src: sha256 prefix (16 hex)}`` of :func:`library_files`.

    Keys are relative (``qaclims/eval_cam.py``), so the same code in another checkout gives
    the same value. Read once per process and file.
    """
    root = Path(src).resolve()
    return {str(Path(f).relative_to(root)): _digest(Path(f)) for f in library_files(script, src)}
