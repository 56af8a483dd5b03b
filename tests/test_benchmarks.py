"""The benchmark scripts that feed the README's speed and GPU-hours tables run and record
(their CPU paths: gpu_check.sh runs the same code with the paper's networks on a GPU)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from qaclims.report import speed

ROOT = Path(__file__).resolve().parents[1]


def test_the_training_step_benchmark_records_both_steps(tmp_path: Path) -> None:
    rec = tmp_path / "r.jsonl"
    cmd = [sys.executable, "benchmarks/bench_train_ritc.py", "--steps", "1", "--train-cam",
           "--record", str(rec)]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = speed.read([rec])
    assert [x["what"] for x in recs] == [
        "train_cam step, tiny, batch 16, 64 px",
        "RITC training step, tiny CAM net + tiny CLIP, batch 8",
    ]
    # CPU and tiny networks: rates, but not the GPU-hours table's (no stage)
    assert all(x["device"] == "cpu" and "stage" not in x and x["ours"] > 0 for x in recs)
    assert recs[0]["reference"] is None and recs[1]["reference"] > 0
    assert "train_cam step, tiny, batch 16, 64 px:" in r.stdout


def test_the_dry_run_benchmark_records_each_shard_count(tmp_path: Path) -> None:
    rec = tmp_path / "r.jsonl"
    cmd = [sys.executable, "benchmarks/bench_dag.py", "--config", "voc12", "--shards", "1", "2",
           "--repeat", "1", "--record", str(rec)]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = speed.read([rec])
    assert (one["shards"], two["shards"]) == (1, 2) and one["config"] == "config/voc12.yaml"
    # a second shard adds jobs and edges (one per rule of the per-image chain and its reads)
    assert two["jobs"] > one["jobs"] > 1 and two["edges"] > one["edges"] > 1
    for x in (one, two):  # the printed row is the record's
        row = f"{x['shards']:>7} {x['jobs']:>7} {x['edges']:>7} {x['seconds']:>8.2f}"
        assert row in r.stdout
    assert f"| `config/voc12.yaml` | 2 | {two['jobs']} | {two['edges']} |" in speed.dag_table(
        [one, two]
    )


def test_every_flag_gpu_check_passes_is_one_its_benchmark_takes() -> None:
    # gpu_check.sh runs on a lent GPU machine with minutes of budget: a misspelt flag there
    # costs a run. Each benchmark's --help lists the flags its parser takes.
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    calls = re.findall(r"python3 (benchmarks/\w+\.py)([^\"\n]*)", script)
    assert len(calls) >= 6
    helps: dict[str, str] = {}
    for path, args in calls:
        if path not in helps:
            r = subprocess.run([sys.executable, path, "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=300)  # fmt: skip
            assert r.returncode == 0, (path, r.stderr[-1000:])
            helps[path] = r.stdout
        flags = re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", args)
        assert flags, path
        for flag in flags:
            assert re.search(rf"(?<![\w-]){flag}(?![\w-])", helps[path]), f"{path}: no {flag}"


def _script(name: str):  # benchmarks/ is no package: load a script as a module
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gpu_wheels():
    return _script("gpu_wheels")


def _gpu_check_modules() -> set[str]:
    """The modules gpu_check.sh runs with ``python3 -m``."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    return set(re.findall(r"python3 -m ([\w.]+)", script))


def test_every_module_gpu_check_runs_exists() -> None:
    # `python3 -m X` lines: a module that does not exist costs the lent machine's run
    import importlib.util

    mods = _gpu_check_modules() - {"pip"}
    assert {"pytest", "snakemake", "qaclims.report.summary"} <= mods
    for m in sorted(mods):
        assert importlib.util.find_spec(m) is not None, m


def test_the_gpu_wheels_cover_every_import_of_the_code_gpu_check_runs() -> None:
    """Second method beside the metadata closure: the third-party modules that the library,
    the workflow scripts, the benchmarks and gpu_check.sh's ``-m`` modules import, mapped to
    their distributions, each travel as a wheel or are in the device image."""
    from tests.imports import distributions, imports_of

    g = _gpu_wheels()
    carry = g.plan(g.closure())
    local = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} | {"tests"}
    files = [*(ROOT / "src" / "qaclims").rglob("*.py"),
             *(ROOT / "workflow" / "scripts").glob("*.py"),
             *(ROOT / "benchmarks").glob("*.py")]  # fmt: skip
    run = {m.split(".")[0] for m in _gpu_check_modules()} - {"qaclims"}
    tops = imports_of([str(f) for f in files]) - local | run
    assert {"open_clip", "pycocotools", "lemminflect", "snakemake", "torch"} <= tops
    for top in sorted(tops):
        names = {g.norm(d) for d in distributions({top})}
        assert names & (set(carry) | g.DEVICE_IMAGE), (
            f"{top} ({names}): neither carried nor on the device"
        )
    # the device's CUDA torch is measured, never ours; PuLP (ILP scheduler only) stays home
    assert not {n for n in carry if g.gpu_stack(n)} and "pulp" not in carry
    assert {"snakemake", "open-clip-torch", "pycocotools", "transformers"} <= set(carry)


def test_the_gpu_wheel_plan_satisfies_every_requirement_it_carries() -> None:
    # each carried package's requirements (on CPython 3.12 Linux) are carried or in the
    # image, and an image package a carried one needs in a range is carried unless its known
    # version meets the range or the image is trusted for it
    g = _gpu_wheels()
    carry = g.plan(g.closure())
    for name in carry:
        for req in g._requirements(name):
            n = g.norm(req.name)
            if n in g.NOT_IMPORTED:
                continue
            assert n in carry or n in g.DEVICE_IMAGE, (name, str(req))
            if n in carry or not str(req.specifier) or n in g.TRUST_IMAGE:
                continue
            known = g.DEVICE_VERSIONS.get(n)
            assert known is not None and req.specifier.contains(known), (name, str(req))


def test_the_seed_summary_counts_wins_and_the_worst_seed_by_hand() -> None:
    import pandas as pd

    mod = _script("bench_demo_seeds")
    table = pd.DataFrame({"seed": [0, 0, 1, 1], "class": ["a", "b", "a", "b"],
                          "gain": [2.0, -1.0, 1.0, -3.0]})  # fmt: skip
    stages = pd.DataFrame({"seed": [0, 0, 1, 1], "stage": ["cam", "ritc", "cam", "ritc"],
                           "miou": [60.0, 70.0, 65.0, 62.0]})  # fmt: skip
    s = mod.summarise(table, stages).set_index("stage")
    assert list(s.index) == ["cam", "ritc"]
    assert s.loc["cam", "mean"] == 62.5 and abs(s.loc["cam", "sd"] - 5 / 2**0.5) < 1e-12
    assert s.loc["ritc", "mean"] == 66.0 and abs(s.loc["ritc", "sd"] - 8 / 2**0.5) < 1e-12
    assert (s.loc["ritc", "n"], s.loc["ritc", "wins"]) == (2, 1)  # seed 1 loses
    assert (s.loc["ritc", "min_seed_gain"], s.loc["ritc", "min_seed"]) == (-3.0, 1)
    assert (s.loc["ritc", "min_class_gain"], s.loc["ritc", "min_class"]) == (-2.0, "b")
    assert s.loc["ritc", "against"] == "cam" and s.loc["cam", "wins"] == -1
    assert mod.WHOLE[-1] == "train_ritc.seed" and "synthetic.seed" in mod.WHOLE
    assert mod.WHOLE_REFINE[-2:] == ("train_irn.seed", "train_deeplab.seed")
    # the whole pipeline: rows in DAG order, IRN counted against QA-CLIMS's CAMs
    more = pd.DataFrame({"seed": [0, 1, 0, 1, 0, 1], "stage": ["irn", "irn", "deeplab_crf",
                         "deeplab_crf", "seeds", "seeds"],
                         "miou": [75.0, 61.0, 80.0, 70.0, 90.0, 92.0]})  # fmt: skip
    s = mod.summarise(table, pd.concat([stages, more])).set_index("stage")
    assert list(s.index) == ["cam", "ritc", "seeds", "irn", "deeplab_crf"]
    assert s.loc["irn", "against"] == "ritc" and s.loc["irn", "wins"] == 1  # +5, -1
    assert (s.loc["irn", "min_seed_gain"], s.loc["irn", "min_seed"]) == (-1.0, 1)
    assert s.loc["deeplab_crf", "mean"] == 75.0 and s.loc["deeplab_crf", "wins"] == -1
    assert s.loc["ritc", "wins"] == 1 and s.loc["irn", "min_class"] == ""
