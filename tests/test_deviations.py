"""The measured deviations of docs/REPRODUCING.md: the preset computes what each switch
reaches and nothing else, the record is made from a run's comparison, and the document's
block is the one its record makes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml

from qaclims.artifacts import camfile
from qaclims.core.errors import DataError
from qaclims.report import deviations, readme
from qaclims.workflow import experiments as ex
from tests.workflow_util import CONFIG, ROOT, dry_run_jobs, expected_config

PRESET = ROOT / "config" / "deviations-demo.yaml"
RECORD = ROOT / "benchmarks" / "records" / "deviations-demo.json"


def test_switches_pair_the_runs_value_with_the_variants() -> None:
    run = {"make_cam": {"store": "levels", "scales": [1.0]}, "corpus": {"rules": "clean"}}
    over = {"make_cam": {"store": "float16"}, "corpus": {"rules": "reference"}}
    assert deviations.switches(over, run) == [
        ["make_cam.store", "levels", "float16"],
        ["corpus.rules", "clean", "reference"],
    ]
    with pytest.raises(DataError, match="make_cam.stride"):
        deviations.switches({"make_cam": {"stride": 2}}, run)


def _cam(path: Path, k: int, hw: tuple[int, int], rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cam = rng.random((k, *hw), dtype=np.float32)
    strided = rng.random((k, (hw[0] + 3) // 4, (hw[1] + 3) // 4), dtype=np.float32)
    camfile.write_cam(path, camfile.cam_arrays(list(range(1, k + 1)), cam, strided))


def test_cam_bytes_are_file_sizes_and_the_float32_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _cam(tmp_path / "a.npz", 2, (12, 20), rng)
    _cam(tmp_path / "b.npz", 1, (8, 8), rng)
    stored, ref = deviations.cam_bytes([tmp_path / "a.npz", tmp_path / "b.npz"])
    sizes = [(tmp_path / n).stat().st_size for n in ("a.npz", "b.npz")]
    assert stored == pytest.approx(sum(sizes) / 2)
    # by hand: 4 bytes x (K H W + K ceil(H/4) ceil(W/4))
    assert ref == pytest.approx((4 * (2 * 12 * 20 + 2 * 3 * 5) + 4 * (8 * 8 + 2 * 2)) / 2)
    with pytest.raises(DataError, match="no CAM files"):
        deviations.cam_bytes([])


def _fake_run(tmp_path: Path, variants: list[str]) -> Path:
    run = tmp_path / "results" / "demo"
    (run / "experiments").mkdir(parents=True)
    cfg = {"splits": {"eval_cam": "val"}, "threads": {"train_torch": 2},
           "make_cam": {"store": "levels"}, "infer_deeplab": {"fusion": "msc"}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for i, v in enumerate(variants):
        for m, base in (("cam_miou", 70.0), ("deeplab_crf_miou", 80.0)):
            mean = base + i
            rows.append({"variant": v, "metric": m, "mean": mean, "sd": float("nan"), "n": 1,
                         "seeds": "0", "delta": mean - base})  # fmt: skip
    pd.DataFrame(rows).to_csv(run / "experiments" / "comparison.csv", index=False)
    rng = np.random.default_rng(1)
    _cam(run / "make_cam" / "ritc" / "val" / "000" / "x.npz", 2, (16, 16), rng)
    _cam(run / "make_cam" / "ritc" / "train" / "000" / "t.npz", 3, (64, 64), rng)  # not val
    cell = run / "experiments" / "f16" / "seed0" / "make_cam" / "ritc" / "val" / "000" / "x.npz"
    cell.parent.mkdir(parents=True)
    keys, cam = camfile.read_cam(run / "make_cam" / "ritc" / "val" / "000" / "x.npz")
    _, st = camfile.read_cam(run / "make_cam" / "ritc" / "val" / "000" / "x.npz", "cam_strided")
    np.savez(cell, keys=keys, cam=cam.astype(np.float16), cam_strided=st.astype(np.float16))
    # the evaluations each variant computed itself (a cell's folders), by hand
    for folder in ("f16/common/eval_cam", "f16/seed0/eval_deeplab", "mean/common/eval_deeplab"):
        (run / "experiments" / folder / "val").mkdir(parents=True)
    return run


PRESET_OF_TEST = {
    "experiments": {
        "seeds": [0],
        "reference": "base",
        "variants": {
            "base": {},
            "f16": {"make_cam": {"store": "float16"}},
            "mean": {"infer_deeplab": {"fusion": "mean"}},
        },
    }
}


def test_a_record_is_made_from_the_runs_comparison(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, ["base", "f16", "mean"])
    timing = {"seconds": 90.0, "command": "snakemake x", "machine": "m", "cores": 2, "jobs": {},
              "code": "qaclims 0.1.0, git feed"}  # fmt: skip
    rec = deviations.make_record(run, PRESET_OF_TEST, timing)
    assert rec["code"] == "qaclims 0.1.0, git feed"  # what ran, not what is checked out now
    assert rec["reference"] == "base" and rec["seeds"] == [0] and rec["split"] == "val"
    assert rec["variants"] == [
        {"name": "f16", "switches": [["make_cam.store", "levels", "float16"]],
         "reached": ["cam_miou", "cam_best_miou", "deeplab_miou", "deeplab_crf_miou"]},
        {"name": "mean", "switches": [["infer_deeplab.fusion", "msc", "mean"]],
         "reached": ["deeplab_miou", "deeplab_crf_miou"]},
    ]  # fmt: skip
    assert len(rec["rows"]) == 6 and rec["rows"][0]["sd"] is None  # NaN is not JSON
    assert rec["threads"] == 2 and rec["seconds"] == 90.0 and "jobs" not in rec
    val = run / "make_cam" / "ritc" / "val" / "000" / "x.npz"
    cell = next((run / "experiments" / "f16").rglob("*.npz"))
    assert rec["cam_bytes"]["base"] == val.stat().st_size  # val only, not train
    assert rec["cam_bytes"]["f16"] == cell.stat().st_size
    assert rec["cam_bytes"]["float32 (reference's .npy)"] == 4 * (2 * 16 * 16 + 2 * 4 * 4)
    json.dumps(rec)  # the record is JSON as it stands
    # another experiment's comparison in the folder is refused
    other = _fake_run(tmp_path / "other", ["base", "no_bg"])
    with pytest.raises(DataError, match="not the preset's variants"):
        deviations.make_record(other, PRESET_OF_TEST, timing)


def test_the_block_tables_the_reference_and_each_switchs_change() -> None:
    rec = {
        "reference": "base",
        "seeds": [0],
        "split": "val",
        "variants": [
            {
                "name": "f16",
                "switches": [["make_cam.store", "levels", "float16"]],
                "reached": ["cam_miou", "deeplab_crf_miou"],
            },
            {
                "name": "max",
                "switches": [["infer_deeplab.fusion", "msc", "max"]],
                "reached": ["deeplab_crf_miou"],
            },
        ],  # fmt: skip
        "rows": [
            {"variant": "base", "metric": "cam_miou", "mean": 78.234, "delta": 0.0},
            {"variant": "base", "metric": "deeplab_crf_miou", "mean": 85.3, "delta": 0.0},
            {"variant": "f16", "metric": "cam_miou", "mean": 78.23, "delta": -0.004},
            {"variant": "f16", "metric": "deeplab_crf_miou", "mean": 86.0, "delta": 0.7},
            {"variant": "max", "metric": "cam_miou", "mean": 78.234, "delta": 0.0},
            {"variant": "max", "metric": "deeplab_crf_miou", "mean": 85.0, "delta": -0.3},
        ],
        "cam_bytes": {"f16": 4096.0, "base": 2048.0, "float32 (reference's .npy)": 8192.0},
        "threads": 2,
        "code": "qaclims 0.1.0, git abc",
        "date": "2026-12-07",
        "seconds": 600.0,
        "command": "snakemake --cores 2",
        "machine": "x86_64, 2 CPUs",
        "cores": 2,
    }
    text = deviations.block(rec)
    assert text.startswith(deviations.BEGIN) and text.endswith(deviations.END)
    lines = text.splitlines()
    assert lines[1] == (
        "| switch: the demo's value -> the variant's | CAM mIoU (%) | DeepLab + CRF mIoU (%) |"
    )
    assert lines[3] == "| none (the demo, `base`) | 78.23 | 85.30 |"
    assert lines[4] == "| `make_cam.store`: `levels` -> `float16` | 0.00 | +0.70 |"  # not -0.00
    assert lines[5] == "| `infer_deeplab.fusion`: `msc` -> `max` |  | -0.30 |"  # CAM not reached
    assert "f16 4.0 KiB (0.50x), base 2.0 KiB (0.25x) of the 8.0 KiB" in text
    assert "took 10.0 min" in text and "git abc" in text and "seed 0" in text


def test_the_shipped_preset_passes_the_experiment_checks() -> None:
    cfg = expected_config([CONFIG, PRESET])
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    ex.check(cfg, schema, jsonschema.Draft202012Validator(schema).validate)
    variants = cfg["experiments"]["variants"]
    assert list(variants)[0] == cfg["experiments"]["reference"] == "demo"
    assert variants["demo"] == {} and cfg["experiments"]["seeds"] == [0]
    # one switch per variant, each a setting the demo has
    run = expected_config([CONFIG])
    for name, over in variants.items():
        if name != "demo":
            assert len(deviations.switches(over, run)) == 1, name


@pytest.mark.workflow
def test_the_preset_computes_what_each_switch_reaches_and_nothing_else(tmp_path: Path) -> None:
    jobs = dry_run_jobs(tmp_path, configfiles=(CONFIG, PRESET))
    cfg = expected_config([CONFIG])
    shards, splits = cfg["shards"], len({*cfg["splits"]["cam"], cfg["splits"]["eval_cam"]})
    # by hand, from the stage graph: which variants reach each stage
    cams = ("rescale_tensor", "store_float16", "corpus_clean")  # make_cam on
    irn = (*cams, "random_irn_backbone")  # train_irn on
    walk = (*irn, "irn_bg_thres")  # make_sem_seg on
    deeplab = (*walk, "fusion_max", "fusion_mean")  # infer_deeplab on
    assert jobs["corpus_cell"] == jobs["text_features_cell"] == jobs["train_ritc_cell"] == 1
    assert jobs["make_cam_cell"] == len(cams) * splits * shards
    assert jobs["cam_to_ir_label_cell"] == len(cams) * splits * shards
    assert jobs["eval_cam_cell"] == jobs["eval_seeds_cell"] == len(cams)
    assert jobs["train_irn_cell"] == len(irn)
    assert jobs["make_sem_seg_cell"] == len(walk) * splits * shards
    assert jobs["eval_sem_seg_cell"] == len(walk)
    assert jobs["train_deeplab_cell"] == len(walk)
    assert jobs["infer_deeplab_cell"] == len(deeplab) * shards
    assert jobs["eval_deeplab_cell"] == 2 * len(deeplab)  # with and without CRF
    assert not {"vqa_cell", "train_cam_cell", "train_tiny_clip_cell"} & set(jobs)
    # the demo variant at seed 0 is the run: no cell of its own but its config record
    assert jobs["run_config_cell"] == 1 + len(deeplab)


def test_reproducing_holds_the_block_its_record_makes() -> None:
    record = json.loads(RECORD.read_text())
    text = (ROOT / "docs" / "REPRODUCING.md").read_text()
    new = readme.replace_block(
        text, deviations.block(record), "REPRODUCING.md", (deviations.BEGIN, deviations.END)
    )
    assert new == text, "run python -m qaclims.report.readme --deviations ... --write"
    preset = yaml.safe_load(PRESET.read_text())["experiments"]
    assert [v["name"] for v in record["variants"]] == [v for v in preset["variants"] if v != "demo"]


def test_the_benchmark_records_a_finished_run(tmp_path: Path) -> None:
    """``bench_deviations.py --record-only`` on a finished run of the shipped preset (made
    by hand here: its comparison, the run's and the float16 cell's CAM files, the cells'
    evaluation folders, the timing the run left) writes the record make_record makes and
    prints its block."""
    preset = yaml.safe_load(PRESET.read_text())
    names = list(preset["experiments"]["variants"])
    run = _fake_run(tmp_path, names)
    (run / "config.yaml").write_text(yaml.safe_dump(expected_config([CONFIG])))
    f16 = run / "experiments" / "store_float16" / "common" / "make_cam" / "ritc" / "val" / "000"
    f16.mkdir(parents=True)
    (run / "experiments" / "f16" / "seed0" / "make_cam" / "ritc" / "val" / "000" / "x.npz").rename(
        f16 / "x.npz"
    )
    for name in names[1:]:
        (run / "experiments" / name / "seed0" / "eval_deeplab").mkdir(parents=True)
    timing = {"seconds": 612.0, "command": "snakemake x", "machine": "m", "cores": 2,
              "code": "qaclims 0.1.0, git c0de"}  # fmt: skip
    wall = run / "experiments" / "benchmarks" / "deviations-wall.json"
    wall.parent.mkdir(parents=True)
    wall.write_text(json.dumps(timing))
    out = tmp_path / "record.json"
    cmd = [sys.executable, "benchmarks/bench_deviations.py", "--record-only", "--run-dir",
           str(run), "--record", str(out)]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(out.read_text())
    want = json.loads(json.dumps(deviations.make_record(run, preset, timing)))
    assert {k: v for k, v in record.items() if k != "date"} == {
        k: v for k, v in want.items() if k != "date"
    }
    assert record["code"] == "qaclims 0.1.0, git c0de" and record["seconds"] == 612.0
    assert set(record["cam_bytes"]) == {"store_float16", "demo", "float32 (reference's .npy)"}
    assert deviations.block(record) in r.stdout
