"""Conda envs: every rule's `conda:` file exists, is generated from pyproject (core + the
family's group, pinned), needs no path relative to where Snakemake copies it, and holds what
its rules import: statically for every env (module -> distribution), by pip's resolver for
the two torch envs, and by a real install into a fresh venv, as Snakemake would install an
env's pip part, for the CRF and report envs, where every module of their rules is imported."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from qaclims.workflow.codegraph import library_files
from tests.imports import distributions, imports_of

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("torch", "vqa", "crf", "report")


def rules() -> dict[str, tuple[str, str | None]]:
    """Rule name -> (env file name, script name) from the rule files."""
    out = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for body in re.split(r"\nrule ", smk.read_text())[1:]:
            name = body.split(":", 1)[0]
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
            script = re.search(r'script:\s*\n\s*"\.\./scripts/(\w+)\.py"', body)
            assert env, f"rule {name} has no conda env"
            out[name] = (Path(env.group(1)).name, script.group(1) if script else None)
    return out


def env_pip(family: str) -> list[str]:
    spec = yaml.safe_load((ROOT / "envs" / f"{family}.yaml").read_text())
    return next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))


def test_every_rule_uses_an_existing_env() -> None:
    used = {env for env, _ in rules().values()}
    assert used == {f"{f}.yaml" for f in FAMILIES}
    assert used == {p.name for p in (ROOT / "envs").glob("*.yaml")}


def test_env_files_are_generated_from_pyproject() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "envs" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for family in FAMILIES:
        pins = env_pip(family)
        expected = project["dependencies"] + project["optional-dependencies"][family]
        assert set(pins) == set(expected), family
        assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][\w.]*", p) for p in pins), pins
        spec = yaml.safe_load((ROOT / "envs" / f"{family}.yaml").read_text())
        assert "nodefaults" in spec["channels"]
        for d in spec["dependencies"]:
            if isinstance(d, str):
                assert re.search(r"=\S", d), f"{family}: conda dependency {d} is not pinned"


def test_env_files_name_no_path() -> None:
    """Nothing relative to the env file (Snakemake builds it from a copy elsewhere)."""
    for family in FAMILIES:
        for p in env_pip(family):
            assert not p.startswith(("-e", ".", "/", "file:")), (family, p)


def test_library_core_does_not_depend_on_snakemake() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("snakemake")]
    for f in (ROOT / "src" / "qaclims").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.split(".")[0] == "snakemake"], f


def _family(family: str) -> tuple[set[str], list[str], list[str]]:
    """(scripts, library files, third-party modules) of the rules using ``family``'s env."""
    scripts = {s for env, s in rules().values() if env == f"{family}.yaml" and s}
    files = sorted(
        {
            f
            for s in scripts
            for f in library_files(ROOT / "workflow/scripts" / f"{s}.py", ROOT / "src")
        }
    )
    own = [str(ROOT / "workflow/scripts" / f"{s}.py") for s in scripts]
    return scripts, files, sorted(imports_of(files + own))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_env_pins_every_package_its_rules_import(family: str) -> None:
    """Static: every third-party module a family's code imports comes from a pinned package."""
    _, _, third = _family(family)
    pinned = {p.split("==")[0].lower().replace("_", "-") for p in env_pip(family)}
    needed = distributions(set(third))
    assert needed <= pinned, f"{family}.yaml lacks {sorted(needed - pinned)}"


def _pip(py: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(py), "-m", "pip", *args, "-q", "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def _requirements(path: Path, pins: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(pins) + "\n")  # what Snakemake hands pip for an env's pip part
    return path


def _driver_pins() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return env_pip("report") + project["optional-dependencies"]["workflow"]


@pytest.fixture(scope="module")
def pip_work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Any]]]:
    """Every pip run of this module, started at once (they wait on the network, not the
    CPU): ``resolve-<family>`` -> (result, report path) for the heavy envs,
    ``install-<family>`` -> (result, venv python) for the light ones and ``driver``."""
    root = tmp_path_factory.mktemp("pip")

    def resolve(family: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        req = _requirements(root / family / "requirements.txt", env_pip(family))
        report = root / family / "r.json"
        return _pip(sys.executable, "install", "--dry-run", "--ignore-installed",
                    "--report", str(report), "-r", str(req)), report  # fmt: skip

    def install(name: str, pins: list[str]) -> tuple[subprocess.CompletedProcess[str], Path]:
        py = _venv(root / name / "env")
        return _pip(py, "install", "-r", str(_requirements(root / name / "req.txt", pins))), py

    with ThreadPoolExecutor(max_workers=5) as pool:
        work = {f"resolve-{f}": pool.submit(resolve, f) for f in ("torch", "vqa")}
        work |= {f"install-{f}": pool.submit(install, f, env_pip(f)) for f in ("crf", "report")}
        work["driver"] = pool.submit(install, "driver", _driver_pins())
        yield work


@pytest.mark.parametrize("family", ["torch", "vqa"])
def test_heavy_envs_resolve(family: str, pip_work: dict[str, Future[Any]]) -> None:
    """The torch and vqa envs resolve as one set (pip's resolver, nothing installed: each
    would be a 5.5 GB torch install; the light envs below are installed for real)."""
    r, report = pip_work[f"resolve-{family}"].result()
    assert r.returncode == 0, r.stderr[-4000:]
    import json

    got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
           for i in json.loads(report.read_text())["install"]}  # fmt: skip
    for pin in env_pip(family):
        name, version = pin.split("==")
        assert got.get(name.lower().replace("_", "-")) == version, pin


def _module_name(path: str) -> str:
    rel = Path(path).relative_to(ROOT / "src").with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["crf", "report"])
def test_env_installs_in_a_fresh_venv_and_its_rules_import(
    family: str, pip_work: dict[str, Future[Any]]
) -> None:
    r, py = pip_work[f"install-{family}"].result()
    assert r.returncode == 0, r.stderr[-4000:]
    scripts = {s for env, s in rules().values() if env == f"{family}.yaml" and s}
    files = sorted(
        {
            f
            for s in scripts
            for f in library_files(ROOT / "workflow/scripts" / f"{s}.py", ROOT / "src")
        }
    )
    modules = [_module_name(f) for f in files]
    third = sorted(
        imports_of(files + [str(ROOT / "workflow/scripts" / f"{s}.py") for s in scripts])
    )
    code = (
        "import importlib, importlib.util, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"missing = [m for m in {third!r} if importlib.util.find_spec(m) is None]\n"
        "assert not missing, f'not installed: {missing}'\n"
        "assert 'snakemake' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT / "src")  # as the Snakefile sets it for every job
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"{family} env: {sorted(scripts)}\n{r.stderr[-4000:]}"


@pytest.mark.slow
def test_jobs_reach_the_library_without_it_being_installed(
    tmp_path: Path, pip_work: dict[str, Future[Any]]
) -> None:
    """A driver env with only Snakemake and the report family's packages (no qaclims, no
    torch), as a conda user has: the run_config job imports the library from the checkout
    (the Snakefile's PYTHONPATH) and records the resolved config; parse-time checks that need
    torch are left to the jobs."""
    import shutil

    r, py = pip_work["driver"].result()
    assert r.returncode == 0, r.stderr[-4000:]
    venv = py.parent.parent
    probe = subprocess.run(
        [str(venv / "bin/python"), "-c", "import importlib.util as u; "
         "print(u.find_spec('qaclims'), u.find_spec('torch'))"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert probe.stdout.split() == ["None", "None"], probe.stdout
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".venv", ".git", "results",
                                                               ".snakemake", "logs"))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    r = subprocess.run(
        ["bash", "-c", "snakemake --cores 1 -- results/demo/config.yaml"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    seen = yaml.safe_load((clone / "results/demo/config.yaml").read_text())
    assert seen["run"] == "demo" and seen["dataset"]["name"] == "synthetic"
