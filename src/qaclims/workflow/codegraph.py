"""The library files a workflow script depends on: its transitive imports inside ``qaclims``.

A rule's ``code`` param is :func:`code_digests` of this list (a digest of each file's code),
so editing any module a stage imports (directly or through another module, at module level
or inside a function) reruns that stage, and nothing else does; touching a file, a ``git
checkout`` that restores its content, or moving the checkout reruns nothing. A param, not
inputs: 20 library files per job were most of the DAG's edges. Standard library only, so
the Snakefile can use it at parse time.

The digest is of the file's code, not of its bytes (:func:`code_text`): comments,
docstrings, other bare string statements, trailing blanks and blank lines are left out, so
an update of the workflow that only rewords documentation reruns nothing. Everything else
counts, down to a reformatted line or another quote style.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import tokenize
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
def _scanned(path: Path) -> tuple[frozenset[str], str]:
    """(the ``qaclims`` modules one file's import statements name, its code digest).

    Parsed once per process, and across processes through :func:`use_scan_cache`."""
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    hit = _SCAN_CACHE.get(str(path))
    if (
        isinstance(hit, list)
        and len(hit) == 4
        and hit[:2] == stamp
        and isinstance(hit[2], list)
        and isinstance(hit[3], str)
    ):
        return frozenset(str(m) for m in hit[2]), hit[3]
    source = path.read_bytes()
    tree = ast.parse(source.decode(), filename=str(path))  # one parse serves both
    found = _scan(tree)
    digest = hashlib.sha256(code_text(source, tree).encode()).hexdigest()[:16]
    _SCAN_CACHE[str(path)] = [*stamp, sorted(found), digest]
    _DIRTY[:] = [True]
    return found, digest


def _imported_modules(path: Path) -> frozenset[str]:
    """``qaclims`` modules named by the import statements of one file (any nesting)."""
    return _scanned(path)[0]


def _bare_strings(tree: ast.Module) -> list[ast.Expr]:
    """Statements that are a string and nothing else: docstrings (module, class, function)
    and the string statements some code uses as attribute comments. Evaluating one has no
    effect; only a docstring is kept, as ``__doc__``."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ]


def _col(line: str, byte_offset: int) -> int:
    """The character index of a UTF-8 byte offset into ``line`` (ast counts bytes)."""
    return len(line.encode()[:byte_offset].decode(errors="ignore"))


def _body_sizes(tree: ast.Module) -> dict[int, int]:
    """``id(statement)`` -> how many statements the body holding it has."""
    sizes: dict[int, int] = {}
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list):
                sizes.update((id(stmt), len(body)) for stmt in body)
    return sizes


def code_text(source: bytes, tree: ast.Module | None = None) -> str:
    """``source`` (a Python file's bytes) without what cannot change what it computes.

    Left out: comments; statements that are only a string (docstrings; a body that holds
    nothing else gets ``pass`` in its place, so the text still compiles); trailing blanks
    and blank lines, except inside a multi-line string literal, which is kept verbatim.
    Everything else is kept as written. A file that does not decode or parse is returned
    as its bytes decoded with replacement, so it still counts by content. ``tree``: the
    file's ``ast.parse`` if the caller has it (parsed here otherwise). The result
    compiles to the bytecode of ``source`` compiled with docstrings stripped (``-OO``),
    line numbers and no-ops aside (tested on every library file).
    """
    try:
        text = source.decode("utf-8")
        tree = ast.parse(text) if tree is None else tree
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (UnicodeDecodeError, SyntaxError, ValueError, tokenize.TokenError):
        return source.decode("utf-8", errors="replace")
    lines = text.split("\n")
    cut: dict[int, int] = {}  # line index -> where its comment starts
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            cut[tok.start[0] - 1] = tok.start[1]
    verbatim: set[int] = set()  # lines inside multi-line string literals
    for node in ast.walk(tree):
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and (node.end_lineno or 0) > node.lineno:
            verbatim.update(range(node.lineno - 1, node.end_lineno or 0))  # 0-based indices
    drop: set[int] = set()
    replace: dict[int, str] = {}
    sizes = _body_sizes(tree)
    for stmt in _bare_strings(tree):
        first, last = stmt.lineno - 1, (stmt.end_lineno or stmt.lineno) - 1
        end_col = _col(lines[last], stmt.end_col_offset or 0)
        head = lines[first][: _col(lines[first], stmt.col_offset)]
        tail = lines[last][end_col:]
        if head.strip() or (tail.strip() and not tail.strip().startswith("#")):
            continue  # shares a line with other code: kept
        span = range(first, last + 1)
        drop.update(span)
        verbatim.difference_update(span)
        if sizes.get(id(stmt)) == 1:
            replace[first] = head + "pass"
    out: list[str] = []
    for i, line in enumerate(lines):
        if i in replace:
            out.append(replace[i])
            continue
        if i in drop:
            continue
        if i in cut:
            line = line[: cut[i]]
        elif i in verbatim:
            out.append(line)
            continue
        line = line.rstrip()
        if line:
            out.append(line)
    return "\n".join(out) + "\n"


LAUNCHERS = ("run_rule",)  # qaclims.workflow.launch: the stage module is named, not imported


def _scan(tree: ast.Module) -> frozenset[str]:
    """Modules named by import statements, and the stage module a training script hands to
    ``launch.run_rule(snakemake, "qaclims....")`` (its worker process imports it)."""
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


def _digest(path: Path) -> str:
    """sha256 prefix (16 hex) of :func:`code_text` of the file."""
    return _scanned(path)[1]


def script_digest(script: str | Path) -> str:
    """sha256 prefix (16 hex) of :func:`code_text` of a workflow script itself.

    A rule's ``code`` param holds it beside :func:`code_digests`, so a script counts by
    content as the library does; the profile ``profiles/default`` drops Snakemake's own
    ``code`` rerun trigger, which reruns a script's rule when the file is merely newer than
    the rule's outputs (a ``git checkout`` that rewrites it unchanged)."""
    return _digest(Path(script).resolve())


def code_digests(script: str | Path, src: str | Path) -> dict[str, str]:
    """``{path relative to src: sha256 prefix (16 hex) of its code_text}`` of
    :func:`library_files`.

    Keys are relative (``qaclims/eval_cam.py``), so the same code in another checkout gives
    the same value. Read once per process and file (and across processes through
    :func:`use_scan_cache`).
    """
    root = Path(src).resolve()
    return {str(Path(f).relative_to(root)): _digest(Path(f)) for f in library_files(script, src)}
