"""The code params: transitive library imports, content digests, the cross-process scan cache."""

from __future__ import annotations

import hashlib
import json
import os
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
    codegraph._imported_modules.cache_clear()
    codegraph._closure.cache_clear()
    codegraph._digest.cache_clear()
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
