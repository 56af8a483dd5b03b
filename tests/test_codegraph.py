"""The code params: transitive library imports, code digests, the cross-process scan cache."""

from __future__ import annotations

import dis
import hashlib
import json
import os
import types
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path

import pytest

from qaclims.workflow import codegraph


@pytest.fixture()
def pkg(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    src = tmp_path / "src"
    (src / "qaclims" / "sub").mkdir(parents=True)
    (src / "qaclims" / "__init__.py").write_text("")
    (src / "qaclims" / "sub" / "__init__.py").write_text("")
    (src / "qaclims" / "a.py").write_text("import os\nfrom qaclims import b\n")
    (src / "qaclims" / "b.py").write_text("def f():\n    from qaclims.sub import c\n")
    (src / "qaclims" / "sub" / "c.py").write_text("x = 1\n")
    (src / "qaclims" / "d.py").write_text("y = 2\n")
    script = tmp_path / "script.py"
    script.write_text("from qaclims.a import thing\n")
    yield src, script
    _clear()


def _clear() -> None:
    codegraph._scanned.cache_clear()
    codegraph._closure.cache_clear()
    codegraph._module_file.cache_clear()
    codegraph._SCAN_CACHE.clear()
    codegraph._SCAN_FILE.clear()
    codegraph._DIRTY.clear()


def test_closure_follows_nested_imports_and_parent_packages(pkg: tuple[Path, Path]) -> None:
    src, script = pkg
    got = {
        Path(p).relative_to(src.resolve()).as_posix() for p in codegraph.library_files(script, src)
    }
    assert got == {
        "qaclims/__init__.py",
        "qaclims/a.py",
        "qaclims/b.py",
        "qaclims/sub/__init__.py",
        "qaclims/sub/c.py",
    }


def test_a_training_script_depends_on_the_stage_it_names(pkg: tuple[Path, Path]) -> None:
    """A training script names its stage for the launcher (``launch.run_rule(snakemake,
    "qaclims.d")``) instead of importing it: the stage's file is in its code all the same;
    another string is not."""
    src, _ = pkg
    script = src.parent / "train.py"
    script.write_text(
        'from qaclims.sub import c\nlaunch.run_rule(snakemake, "qaclims.d")\nprint("qaclims.a")\n'
    )
    got = {
        Path(p).relative_to(src.resolve()).as_posix() for p in codegraph.library_files(script, src)
    }
    assert got == {"qaclims/__init__.py", "qaclims/d.py", "qaclims/sub/__init__.py",
                   "qaclims/sub/c.py"}  # fmt: skip


def test_the_shipped_training_scripts_depend_on_their_stage_modules() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    scripts = sorted((root / "workflow" / "scripts").glob("train_*.py"))
    assert len(scripts) == 6
    for script in scripts:
        m = re.search(r'run_rule\(snakemake, "([\w.]+)"\)', script.read_text())
        assert m, script.name
        files = codegraph.code_digests(script, root / "src")
        assert m.group(1).replace(".", "/") + ".py" in files, script.name
        assert "qaclims/workflow/launch.py" in files and "qaclims/workflow/cli.py" in files


def test_digests_are_relative_content_hashes(pkg: tuple[Path, Path]) -> None:
    src, script = pkg
    d = codegraph.code_digests(script, src)
    assert d["qaclims/sub/c.py"] == hashlib.sha256(b"x = 1\n").hexdigest()[:16]
    assert "qaclims/d.py" not in d


def test_scan_cache_is_reused_and_invalidated_by_an_edit(pkg: tuple[Path, Path]) -> None:
    src, script = pkg
    cache = src.parent / "cache" / "imports.json"
    codegraph.use_scan_cache(cache)
    codegraph.library_files(script, src)
    codegraph.save_scan_cache()
    stored = json.loads(cache.read_text())
    b = str((src / "qaclims" / "b.py").resolve())
    assert stored[b][2] == ["qaclims.sub", "qaclims.sub.c"]
    # a fresh process with the cache: an unchanged file is not parsed again ...
    _clear()
    codegraph.use_scan_cache(cache)
    stored[b][2] = ["qaclims.d"]  # what a (fake) earlier scan found
    cache.write_text(json.dumps(stored))
    codegraph.use_scan_cache(cache)
    names = {Path(p).name for p in codegraph.library_files(script, src)}
    assert "d.py" in names and "c.py" not in names
    # ... and an edited file (new size / mtime) is
    _clear()
    codegraph.use_scan_cache(cache)
    (src / "qaclims" / "b.py").write_text("def f():\n    from qaclims.sub import c  # edited\n")
    st = os.stat(src / "qaclims" / "b.py")
    os.utime(src / "qaclims" / "b.py", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    names = {Path(p).name for p in codegraph.library_files(script, src)}
    assert "c.py" in names and "d.py" not in names


def test_unreadable_cache_is_ignored(pkg: tuple[Path, Path]) -> None:
    src, script = pkg
    cache = src.parent / "imports.json"
    cache.write_text("{not json")
    codegraph.use_scan_cache(cache)
    assert len(codegraph.library_files(script, src)) == 5


def test_scan_cache_keeps_the_code_digest(pkg: tuple[Path, Path]) -> None:
    """A fresh process takes a file's digest from the cache while the file's size and mtime
    are unchanged."""
    src, script = pkg
    cache = src.parent / "imports.json"
    codegraph.use_scan_cache(cache)
    first = codegraph.code_digests(script, src)
    codegraph.save_scan_cache()
    stored = json.loads(cache.read_text())
    c = str((src / "qaclims" / "sub" / "c.py").resolve())
    assert stored[c][3] == first["qaclims/sub/c.py"]
    stored[c][3] = "0" * 16  # what a (fake) earlier scan found
    cache.write_text(json.dumps(stored))
    _clear()
    codegraph.use_scan_cache(cache)
    assert codegraph.code_digests(script, src)["qaclims/sub/c.py"] == "0" * 16


SOURCE = '''"""Module docstring."""

# a comment line
import os  # trailing comment


def f(x):
    """One line."""

    return x  # why


def g():
    """Only a docstring:
    its body becomes pass."""


class A:
    """Class docstring."""

    size = 3
    """An attribute's doc string."""

    def h(self):
        text = """first line
  kept<SP>

        verbatim, # not a comment
"""
        return text; "shares its line"
'''.replace("<SP>", "  ")  # trailing blanks inside a literal

# written by hand from SOURCE: what is left of it
EXPECTED = '''import os
def f(x):
    return x
def g():
    pass
class A:
    size = 3
    def h(self):
        text = """first line
  kept<SP>

        verbatim, # not a comment
"""
        return text; "shares its line"
'''.replace("<SP>", "  ")


def test_code_text_leaves_out_comments_docstrings_and_blank_lines() -> None:
    assert codegraph.code_text(SOURCE.encode()) == EXPECTED


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        ('"""One line."""', '"""One line, reworded."""', True),
        ("# why", "# because", True),
        ("import os  # trailing comment", "import os", True),
        ("    size = 3\n", "\n\n    size = 3   \n", True),
        ('"""An attribute\'s doc string."""', '"""Reworded."""', True),
        ('its body becomes pass."""', 'still pass."""', True),
        ("return x  # why", "return x + 0", False),
        ("size = 3", "size = 4", False),
        ("  kept  \n", "  kept \n", False),  # inside a string literal: verbatim
        ("  kept  \n\n", "  kept  \n", False),  # a blank line inside a literal
        ('"shares its line"', '"other"', False),  # not alone on its line: kept
        ("def f(x):", "def f(y):", False),
    ],
)
def test_only_code_edits_change_the_digest(tmp_path: Path, old: str, new: str, same: bool) -> None:
    assert old in SOURCE
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(SOURCE)
    b.write_text(SOURCE.replace(old, new, 1))
    assert (codegraph._digest(a) == codegraph._digest(b)) is same
    codegraph._scanned.cache_clear()


def test_code_text_of_a_file_that_does_not_parse_is_its_content() -> None:
    assert codegraph.code_text(b"def (:\n  # x\n") == "def (:\n  # x\n"
    assert codegraph.code_text(b"\xff\xfe") == "\ufffd\ufffd"


def _bytecode(code: types.CodeType) -> tuple[object, ...]:
    """A code object's instructions and names, line numbers and no-ops aside (jumps as
    indices into the instructions kept)."""
    kept = [i for i in dis.get_instructions(code) if i.opname not in ("NOP", "RESUME", "CACHE")]
    offsets = [i.offset for i in kept]
    ops: list[tuple[str, object]] = []
    for i in kept:
        if i.opcode in dis.hasjrel or i.opcode in dis.hasjabs:
            ops.append((i.opname, bisect_left(offsets, i.argval)))
        elif isinstance(i.argval, types.CodeType):
            ops.append((i.opname, _bytecode(i.argval)))
        else:
            ops.append((i.opname, repr(i.argval)))
    consts = tuple(
        _bytecode(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts
    )
    names = (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)
    return (code.co_name, code.co_argcount, code.co_kwonlyargcount, code.co_flags, names,
            tuple(ops), consts)  # fmt: skip


def test_code_text_compiles_like_the_file_for_every_library_module_and_script() -> None:
    """Second method: what the digest reads compiles, for every file of the library and
    every workflow script, to the bytecode of the file itself with docstrings stripped as
    ``python -OO`` strips them."""
    root = Path(__file__).resolve().parents[1]
    files = sorted([*(root / "src").rglob("*.py"), *(root / "workflow" / "scripts").glob("*.py")])
    assert len(files) > 100
    for f in files:
        raw = f.read_bytes()
        want = _bytecode(compile(raw, str(f), "exec", optimize=2))
        text = codegraph.code_text(raw)
        assert len(text) < len(raw) or not raw.strip(), f
        assert _bytecode(compile(text, str(f), "exec", optimize=2)) == want, f


def test_the_bytecode_check_sees_a_changed_constant() -> None:
    a = _bytecode(compile("def f():\n    return 1\n", "a", "exec", optimize=2))
    b = _bytecode(compile("def f():\n    return 2\n", "a", "exec", optimize=2))
    c = _bytecode(compile("def f():\n\n    return 1  # c\n", "a", "exec", optimize=2))
    assert a != b and a == c
