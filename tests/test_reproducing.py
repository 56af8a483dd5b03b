"""docs/REPRODUCING.md's reference table against the configs the paper runs' jobs see."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.workflow_util import ROOT, expected_config

DOC = ROOT / "docs" / "REPRODUCING.md"


def table() -> list[tuple[str, Any, Any]]:
    text = DOC.read_text()
    body = text.split("<!-- reference-table:start -->", 1)[1].split("<!-- reference-table:end -->")[
        0
    ]
    rows = []
    for line in body.strip().splitlines()[2:]:  # header, rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key, voc, coco = (re.fullmatch(r"`(.*)`", c).group(1) for c in cells[:3])  # type: ignore[union-attr]
        rows.append((key, yaml.safe_load(voc), yaml.safe_load(coco)))
    return rows


ROWS = table()


def lookup(cfg: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_the_table_covers_every_refinement_and_training_stage() -> None:
    stages = {k.split(".")[0] for k, _, _ in ROWS}
    assert {"train_cam", "make_cam", "eval_cam", "vqa", "corpus", "clip", "text_features",
            "train_ritc", "cam_to_ir_label", "train_irn", "make_sem_seg"} <= stages  # fmt: skip
    assert len(ROWS) >= 45 and len({k for k, _, _ in ROWS}) == len(ROWS)


@pytest.mark.parametrize("name", ["voc12", "coco14"])
def test_paper_configs_hold_the_reference_values(name: str) -> None:
    cfg = expected_config([ROOT / "config" / f"{name}.yaml"])
    wrong = {}
    for key, voc, coco in ROWS:
        want = voc if name == "voc12" else coco
        got = lookup(cfg, key)
        if isinstance(got, tuple | list) and isinstance(want, list):
            got = list(got)
        if got != want:
            wrong[key] = (got, want)
    assert not wrong, wrong


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_deeplab_recipe_overlays() -> None:
    """config/deeplab/: the CLIMS recipe is what voc12.yaml already computes; the
    deeplab-pytorch COCO-init one changes exactly the settings where the two references
    differ; both files set the same keys, so either overlay fully replaces the other."""
    recipes = ROOT / "config" / "deeplab"
    files = {p.stem: yaml.safe_load(p.read_text()) for p in recipes.glob("*.yaml")}
    assert set(files) == {"clims-imagenet", "deeplab-pytorch-coco"}
    keys = [set(_flat(f["train_deeplab"])) for f in files.values()]
    assert keys[0] == keys[1] and set(files["clims-imagenet"]) == {"train_deeplab"}
    voc = ROOT / "config" / "voc12.yaml"
    base = expected_config([voc])["train_deeplab"]
    assert expected_config([voc, recipes / "clims-imagenet.yaml"])["train_deeplab"] == base
    coco_init = _flat(
        expected_config([voc, recipes / "deeplab-pytorch-coco.yaml"])["train_deeplab"]
    )
    changed = {k for k, v in _flat(base).items() if coco_init[k] != v}
    assert changed == {
        "model.backbone.weights", "loss", "batch_size", "loss_batch", "iterations", "scales",
    }  # fmt: skip
    assert coco_init["model.backbone.weights"].endswith("deeplabv1_resnet101-coco.pth")
    assert (coco_init["batch_size"], coco_init["loss_batch"], coco_init["loss"]) == (10, 5, "ce")
