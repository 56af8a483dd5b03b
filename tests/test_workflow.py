"""The workflow as users drive it: schema errors, dry runs of every shipped config, a real
smoke-size run of the demo DAG, rerun semantics, lint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.workflow_util import (
    CONFIG,
    ROOT,
    SMOKE,
    copy_repo,
    dry_run_jobs,
    snakemake,
    write_overlay,
)

pytestmark = pytest.mark.workflow


def test_unknown_key_is_rejected_naming_it(tmp_path: Path) -> None:
    bad = write_overlay(tmp_path / "bad.yaml", {"train_cam": {"learning_rate": 0.1}})
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, bad), check=False)
    assert r.returncode != 0
    assert "learning_rate" in r.stderr + r.stdout


def test_wrong_type_is_rejected_naming_it(tmp_path: Path) -> None:
    bad = write_overlay(tmp_path / "bad.yaml", {"make_cam": {"scales": "1.0"}})
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, bad), check=False)
    out = r.stderr + r.stdout
    assert r.returncode != 0
    assert "scales" in out and "make_cam" in out


def test_split_mismatch_is_rejected(tmp_path: Path) -> None:
    bad = write_overlay(tmp_path / "bad.yaml", {"splits": {"eval_cam": "test"}})
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, bad), check=False)
    assert r.returncode != 0 and "'test'" in r.stderr + r.stdout


def test_demo_dry_run_has_every_stage_sharded(tmp_path: Path) -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    jobs = dry_run_jobs(tmp_path, configfiles=(CONFIG,))
    n_cam_splits = len(cfg["splits"]["cam"])
    assert jobs["make_cam"] == cfg["shards"]["make_cam"] * n_cam_splits * len(cfg["methods"])
    for rule in ("synthetic", "dataset", "train_cam", "eval_cam", "all"):
        assert jobs[rule] >= 1, rule


def _fake_voc(root: Path, ids: dict[str, list[str]]) -> None:
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for split, names in ids.items():
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    for name in {n for names in ids.values() for n in names}:
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.jpg"
        )
        mask = np.zeros((20, 30), np.uint8)
        mask[5:15, 5:20] = 12  # dog
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{name}.png")
        (root / "Annotations" / f"{name}.xml").write_text(
            "<annotation><object><name>dog</name></object></annotation>"
        )


def _fake_coco(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / f"{split}2014").mkdir(parents=True)
        images, anns = [], []
        for i in range(3):
            name = f"COCO_{split}2014_{i:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(
                root / f"{split}2014" / name
            )
            images.append({"id": i + 1, "file_name": name, "height": 16, "width": 24})
            anns.append(
                {
                    "id": i + 1,
                    "image_id": i + 1,
                    "category_id": 18,
                    "iscrowd": 0,
                    "area": 40.0,
                    "bbox": [2, 2, 8, 5],
                    "segmentation": [[2, 2, 10, 2, 10, 7, 2, 7]],
                }
            )
        cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )


@pytest.mark.parametrize("name", ["voc12", "coco14"])
def test_paper_configs_dry_run_on_fake_trees(tmp_path: Path, name: str) -> None:
    data = tmp_path / "data"
    if name == "voc12":
        _fake_voc(data, {"train_aug": ["a", "b", "c"], "train": ["a", "b"], "val": ["d"]})
    else:
        _fake_coco(data)
    cfg_file = ROOT / "config" / f"{name}.yaml"
    over = write_overlay(tmp_path / "o.yaml", {"dataset": {"root": str(data)}})
    # build the manifests for real, then dry-run the whole DAG on top of them
    snakemake(tmp_path, "--cores", "1", "dataset", configfiles=(cfg_file, over))
    run = yaml.safe_load(cfg_file.read_text())["run"]
    manifests = sorted(p.name for p in (tmp_path / "results" / run / "data/manifest").iterdir())
    assert manifests == sorted(
        f"{s}.parquet" for s in yaml.safe_load(cfg_file.read_text())["dataset"]["splits"]
    )
    jobs = dry_run_jobs(tmp_path, configfiles=(cfg_file, over))
    cfg = yaml.safe_load(cfg_file.read_text())
    assert jobs["make_cam"] == cfg["shards"]["make_cam"] * len(cfg["splits"]["cam"]) * 2
    assert "dataset" not in jobs  # already built


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One real run of the demo DAG at smoke size, from a copy of the repo (so a test can
    edit its library code), shared by the tests below. Returns (repo copy, workdir)."""
    base = tmp_path_factory.mktemp("smoke")
    repo = copy_repo(base / "repo")
    work = base / "work"
    work.mkdir()
    snakemake(work, "--cores", "2", "--resources", "gpu=1", repo=repo)
    return repo, work


def test_smoke_run_outputs(smoke: tuple[Path, Path]) -> None:
    run = smoke[1] / "results" / "demo"
    cfg = yaml.safe_load(CONFIG.read_text())
    n_val = yaml.safe_load(SMOKE.read_text())["synthetic"]["num_images"]["val"]
    for model in cfg["methods"]:
        s = json.loads((run / "eval_cam" / model / "val" / "summary.json").read_text())
        assert s["num_images"] == n_val
        assert 0.0 <= s["miou"] <= 1.0
        assert s["best_miou"] >= s["miou"] - 1e-12
        cams = sorted((run / "make_cam" / model / "val").glob("*/*.npz"))
        assert len(cams) == n_val
    assert not (run / ".resume" / "train_cam" / "state.pt").exists()


def _jobs(smoke: tuple[Path, Path], overlay: dict | None = None) -> set[str]:
    repo, work = smoke
    files: tuple[Path, ...] = (CONFIG, SMOKE)
    if overlay is not None:
        files += (write_overlay(work / "change.yaml", overlay),)
    return set(dry_run_jobs(work, configfiles=files, repo=repo))


def test_nothing_to_do_after_a_run(smoke: tuple[Path, Path]) -> None:
    assert _jobs(smoke) == set()


def test_changing_eval_thresholds_reruns_only_eval(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"eval_cam": {"threshold": 0.2}})
    assert jobs - {"all", "report"} == {"eval_cam"}


def test_changing_make_cam_scales_keeps_the_model(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"make_cam": {"scales": [1.0]}})
    assert "make_cam" in jobs and not jobs & {"train_cam", "dataset", "synthetic"}


def test_changing_shards_does_not_retrain(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"shards": {"make_cam": 3}})
    assert "make_cam" in jobs and "train_cam" not in jobs


def test_changing_train_cam_reruns_downstream_not_upstream(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"train_cam": {"lr": 0.05}})
    assert {"train_cam", "make_cam", "eval_cam"} <= jobs
    assert not jobs & {"synthetic", "dataset", "vqa", "corpus"}


UPSTREAM_OF_CAMS = {"synthetic", "dataset", "train_cam"}


def test_changing_a_vqa_question_reruns_qape_and_after(smoke: tuple[Path, Path]) -> None:
    q = "What colour is the {}?"
    fg = (
        list(yaml.safe_load(SMOKE.read_text()).get("vqa", {}).get("questions", {}).get("fg", []))
        or None
    )
    from qaclims.vqa import FG_QUESTIONS

    jobs = _jobs(smoke, {"vqa": {"questions": {"fg": [*(fg or FG_QUESTIONS), q]}}})
    assert {"vqa", "corpus", "text_features", "train_ritc", "make_cam", "eval_cam"} <= jobs
    assert not jobs & UPSTREAM_OF_CAMS


def test_changing_crf_parameters_reruns_refinement_only(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"cam_to_ir_label": {"crf": {"iterations": 3}}})
    assert {"cam_to_ir_label", "train_irn", "make_sem_seg", "eval_sem_seg"} <= jobs
    assert not jobs & (UPSTREAM_OF_CAMS | {"make_cam", "train_ritc", "eval_cam", "vqa"})


def test_changing_deeplab_iterations_reruns_deeplab_only(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"train_deeplab": {"iterations": 21}})
    assert jobs - {"all", "report"} == {"train_deeplab", "infer_deeplab", "eval_deeplab"}


def test_report_holds_tables_and_figures(smoke: tuple[Path, Path]) -> None:
    repo, work = smoke
    out = work / "report.html"
    snakemake(work, "--report", str(out), repo=repo)
    html = out.read_text(errors="replace")
    for item in (
        "index.html",
        "per_class_iou.png",
        "sweep.png",
        "overlays.png",
        "losses.png",
        "corpus.html",
        "eval_cam",
    ):
        assert item in html, item
    table = (work / "results" / "demo" / "report" / "index.html").read_text()
    s = json.loads((work / "results/demo/eval_cam/cam/val/summary.json").read_text())
    assert f"{100 * s['miou']:.2f}" in table
    for png in ("per_class_iou", "sweep", "overlays", "losses"):
        data = (work / "results" / "demo" / "report" / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_editing_library_code_reruns_its_stage(smoke: tuple[Path, Path]) -> None:
    repo, _ = smoke
    src = repo / "src" / "qaclims" / "eval_cam.py"
    original = src.read_text()
    try:
        src.write_text(original + "\n# edited\n")
        jobs = _jobs(smoke)
    finally:
        src.write_text(original)
    assert "eval_cam" in jobs and not jobs & {"train_cam", "make_cam", "dataset"}


def test_lint_is_clean(tmp_path: Path) -> None:
    r = snakemake(ROOT, "--lint", configfiles=(CONFIG,), check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_snakefmt_is_clean() -> None:
    import subprocess
    import sys

    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    r = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
