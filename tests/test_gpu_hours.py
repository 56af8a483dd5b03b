"""The GPU-hours estimate: the work each stage of the paper config does, and hours from the
GPU speed records (qaclims.report.gpu_hours)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from qaclims.core.errors import ConfigError, DataError
from qaclims.data.manifest import write_manifest
from qaclims.report import gpu_hours, speed

ROOT = Path(__file__).resolve().parents[1]
VOC = gpu_hours.load_config([ROOT / "config" / "voc12.yaml"])
N_AUG = 10582


def _items(work: list[gpu_hours.Work]) -> dict[str, int]:
    return {w.stage: w.items for w in work}


def test_the_voc12_work_is_what_the_authors_recipes_process() -> None:
    # By hand from the reference recipes: IRN's train_cam (5 epochs, batch 16) and train_irn
    # (3 epochs, batch 32), QA-CLIMS's RITC (15 epochs, 2 GPUs x 4), CLIMS's DeepLab-v2
    # (30k iterations of batch 10 x iter_size 2), full batches only; CAMs of train_aug for
    # both methods; the 16 questions of every (image, class) pair; val for inference.
    got = _items(gpu_hours.workload(VOC, gpu_hours.VOC12_SIZES, pairs=15000))
    assert got == {
        "vqa": 15000 * 16,
        "train_cam": 5 * 661 * 16,
        "train_ritc": 15 * 1322 * 8,
        "make_cam": 2 * N_AUG,
        "train_irn": 3 * 330 * 32,
        "make_sem_seg": N_AUG,
        "train_deeplab": 30000 * 20,
        "infer_deeplab": 1449,
    }
    assert [w.stage for w in gpu_hours.workload(VOC, gpu_hours.VOC12_SIZES, 1)] == list(got)


def test_the_work_follows_the_config() -> None:
    cfg = copy.deepcopy(VOC)
    cfg["methods"] = ["cam"]
    cfg["refine"]["enabled"] = False
    cfg["deeplab"]["enabled"] = False
    cfg["vqa"]["backend"] = "precomputed"
    cfg["train_cam"]["epochs"] = 2
    cfg["splits"]["cam"] = ["train_aug", "val"]
    got = _items(gpu_hours.workload(cfg, gpu_hours.VOC12_SIZES, pairs=15000))
    assert got == {"train_cam": 2 * 661 * 16, "make_cam": N_AUG + 1449}
    with pytest.raises(ConfigError, match="no image count for split 'val'"):
        gpu_hours.workload(cfg, {"train_aug": N_AUG}, 1)


def _rec(stage: str | None, ours: float, device: str = "NVIDIA H200", **kw: object) -> dict:
    r = {"bench": "b.py", "what": f"{stage} net", "unit": "img/s", "reference": None,
         "ours": ours, "device": device, "threads": None, "machine": "m", "torch": "t",
         "date": "d", "commit": "c", **kw}  # fmt: skip
    if stage:
        r["stage"] = stage
    return r


def test_hours_are_work_over_the_latest_gpu_rate_of_the_stage() -> None:
    work = [gpu_hours.Work("train_cam", 36000, "img/s", ""),
            gpu_hours.Work("vqa", 7200, "answers/s", "")]  # fmt: skip
    records = [
        _rec("train_cam", 5.0),
        _rec("train_cam", 10.0),  # later: wins
        _rec("train_cam", 1.0, device="cpu"),  # CPU: not a GPU-hours rate
        _rec(None, 99.0),  # no stage: not the stage's network at the paper's settings
        _rec("train_cam", 20.0, device="NVIDIA H100"),
        _rec("vqa", 4.0, unit="answers/s"),
    ]
    got = {(e.stage, e.device): e.hours for e in gpu_hours.estimate(work, records)}
    assert got == {
        ("train_cam", "NVIDIA H200"): pytest.approx(36000 / 10 / 3600),
        ("train_cam", "NVIDIA H100"): pytest.approx(36000 / 20 / 3600),
        ("vqa", "NVIDIA H200"): pytest.approx(7200 / 4 / 3600),
    }
    with pytest.raises(DataError, match="stage vqa on NVIDIA H200 is in img/s"):
        gpu_hours.estimate(work, [_rec("vqa", 4.0)])


def test_the_table_totals_the_measured_stages_and_names_the_rest() -> None:
    work = [gpu_hours.Work("a", 7200, "img/s", "x"), gpu_hours.Work("b", 3600, "img/s", "y"),
            gpu_hours.Work("c", 1, "img/s", "z")]  # fmt: skip
    est = gpu_hours.estimate(work, [_rec("a", 1.0), _rec("b", 2.0)])
    text = gpu_hours.table(work, est, "note")
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines()[2:5]}
    assert rows["a"][3].strip() == "2.00 h (1.00 img/s)"
    assert rows["b"][3].strip() == "0.50 h (2.00 img/s)"
    assert rows["c"][3].strip() == "not measured"
    total = [line for line in text.splitlines() if line.startswith("| **total**")][0]
    assert "2.50 h + 1 stages not measured" in total
    empty = gpu_hours.table(work, [], "note")
    assert empty.count("not measured") == 3 and "none measured" in empty


def test_the_vqa_pairs_can_be_counted_in_a_manifest(tmp_path: Path) -> None:
    rows = [{"image_id": f"{i}", "image_path": f"{i}.jpg", "height": 1, "width": 1,
             "labels": list(range(i % 3 + 1)), "gt_path": ""} for i in range(7)]  # fmt: skip
    write_manifest(tmp_path / "m.parquet", pd.DataFrame(rows))
    rec = tmp_path / "r.jsonl"
    rec.write_text(json.dumps(_rec("vqa", 2.0, unit="answers/s")) + "\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{gpu_hours.BEGIN}\nold\n{gpu_hours.END}\ntail\n")
    argv = [
        "--records",
        str(rec),
        "--manifest",
        str(tmp_path / "m.parquet"),
        "--write",
        str(readme),
    ]
    gpu_hours.main(argv)
    text = readme.read_text()
    pairs = sum(i % 3 + 1 for i in range(7))  # 1 + 2 + 3 + 1 + 2 + 3 + 1
    vqa = [line for line in text.splitlines() if line.startswith("| vqa |")][0]
    assert f"| {pairs * 16:,} answers: {pairs:,} (image, class) pairs" in vqa
    hours = float(re.search(r"\| ([\d.]+) h \(2\.00 answers/s\)", vqa).group(1))  # type: ignore[union-attr]
    assert hours == pytest.approx(pairs * 16 / 2 / 3600, abs=0.005)
    assert text.startswith("head\n") and text.endswith("tail\n") and "old" not in text


def test_the_readme_gpu_hours_table_is_the_one_its_records_make() -> None:
    text = (ROOT / "README.md").read_text()
    records = sorted((ROOT / "benchmarks" / "records").glob("*.jsonl"))
    from qaclims.report.readme import VOC_PAIRS_PER_IMAGE

    src = f"{VOC_PAIRS_PER_IMAGE:g} per image assumed, not counted (`--manifest` counts them)"
    cfg = ROOT / "config" / "voc12.yaml"
    want = gpu_hours.block([cfg], records, VOC_PAIRS_PER_IMAGE * N_AUG, src)
    assert text.count(gpu_hours.BEGIN) == 1 and want in text
    assert speed.read(records)  # the same records as the speed table
