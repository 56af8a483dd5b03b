"""Conda envs: every rule's `conda:` file exists, is pinned, and agrees with pyproject."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def project_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for d in deps:
        name, _, version = d.partition("==")
        assert version, f"pyproject dependency {d!r} is not pinned with =="
        pins[name.lower()] = version
    return pins


def conda_paths() -> set[Path]:
    """Env files named by `conda:` directives, resolved as Snakemake does (rule file's dir)."""
    found = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for m in re.finditer(r"conda:\s*\n\s*\"([^\"]+)\"", smk.read_text()):
            found.add((smk.parent / m.group(1)).resolve())
    return found


def test_every_rule_file_uses_existing_envs() -> None:
    paths = conda_paths()
    assert paths, "no conda: directive found"
    for p in paths:
        assert p.is_file(), f"missing conda env {p}"
    assert {p.name for p in paths} == {p.name for p in (ROOT / "envs").glob("*.yaml")}


def test_env_pins_agree_with_pyproject() -> None:
    pins = project_pins()
    for env in (ROOT / "envs").glob("*.yaml"):
        spec = yaml.safe_load(env.read_text())
        assert "nodefaults" in spec["channels"], env
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        assert pip[-1] == "-e ..", f"{env.name}: the project itself must be installed last"
        for req in pip[:-1]:
            name, _, version = req.partition("==")
            assert version, f"{env.name}: {req} is not pinned"
            assert pins.get(name.lower()) == version, (
                f"{env.name}: {name}=={version} but pyproject pins {pins.get(name.lower())}"
            )
        for d in spec["dependencies"]:
            if isinstance(d, str):
                assert re.search(r"=\S", d), f"{env.name}: conda dependency {d} is not pinned"


def test_every_rule_has_log_and_env() -> None:
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = re.split(r"\nrule ", text)[1:]
        for body in rules:
            name = body.split(":", 1)[0]
            assert "\n    log:" in body, f"rule {name} has no log"
            assert "\n    conda:" in body, f"rule {name} has no conda env"
            assert "\n    threads:" in body, f"rule {name} has no threads"
