"""The VOC test set: its unlabelled manifest, the evaluation server's archive, and the
parse-time checks of ``splits.test``."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from qaclims.core.config import from_mapping
from qaclims.core.errors import ConfigError, DataError
from qaclims.data import dataset
from qaclims.data.manifest import write_manifest
from qaclims.seg import submission
from qaclims.workflow import preflight
from tests.workflow_util import fake_voc

K = 21
SIZES = {"2008_000003": (7, 9), "2008_000010": (5, 6), "2009_000001": (8, 4)}
TOP = "results/VOC2012/Segmentation/comp5_test_cls"


def devkit_colour(i: int) -> tuple[int, int, int]:
    """VOClabelcolormap.m's colour of index ``i``: bit k of (r, g, b) = bits 3j, 3j+1, 3j+2
    of ``i``, placed from the top bit down."""
    bits = [(i >> k) & 1 for k in range(24)]
    return tuple(  # type: ignore[return-value]
        sum(bits[3 * j + ch] << (7 - j) for j in range(8)) for ch in range(3)
    )


@pytest.fixture()
def masks(tmp_path: Path) -> dict[str, Any]:
    """A test manifest and its masks in two shard folders (ids alternate between them)."""
    rng = np.random.default_rng(3)
    rows = [
        {"image_id": i, "image_path": f"JPEGImages/{i}.jpg", "height": h, "width": w,
         "labels": [], "gt_path": ""}
        for i, (h, w) in SIZES.items()
    ]  # fmt: skip
    write_manifest(tmp_path / "test.parquet", pd.DataFrame(rows))
    labels = {}
    for k, (i, (h, w)) in enumerate(SIZES.items()):
        lab = rng.integers(0, K, (h, w), dtype=np.uint8)
        lab[0, 0] = 20  # tvmonitor somewhere
        labels[i] = lab
        d = tmp_path / "crf" / f"{k % 2:03d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(lab, mode="L").save(d / f"{i}.png")  # not a palette PNG: re-encoded
    dirs = [tmp_path / "crf" / "000", tmp_path / "crf" / "001"]
    return {"manifest": tmp_path / "test.parquet", "dirs": dirs, "labels": labels}


def test_archive_holds_one_voc_palette_png_per_id(masks: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "sub" / "test.tar.gz"
    s = submission.pack(masks["manifest"], masks["dirs"], out, K)
    assert s["images"] == 3 and s["competition"] == "comp5" and s["members"] == TOP
    assert s["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    with tarfile.open(out) as tar:
        members = tar.getmembers()
        dirs = [m.name for m in members if m.isdir()]
        assert dirs == ["results", "results/VOC2012", "results/VOC2012/Segmentation", TOP]
        files = [m for m in members if m.isfile()]
        assert [m.name for m in files] == [f"{TOP}/{i}.png" for i in sorted(SIZES)]
        assert {(m.uid, m.gid, m.mtime, m.mode) for m in files} == {(0, 0, 0, 0o644)}
        for m in files:
            im = Image.open(tar.extractfile(m))  # type: ignore[arg-type]
            assert im.mode == "P"
            pal = im.getpalette()
            assert pal is not None
            for idx in (0, 1, 15, 20, 255):  # background, aeroplane, person, tvmonitor
                assert tuple(pal[3 * idx : 3 * idx + 3]) == devkit_colour(idx)
            assert devkit_colour(15) == (192, 128, 128) and devkit_colour(1) == (128, 0, 0)
            np.testing.assert_array_equal(np.asarray(im), masks["labels"][Path(m.name).stem])


def test_same_masks_give_the_same_bytes(masks: dict[str, Any], tmp_path: Path) -> None:
    # a temporary left by an interrupted atomic write is not a mask
    (masks["dirs"][0] / ".2008_000003.png.x1y2.png").write_bytes(b"partial")
    a = submission.pack(masks["manifest"], masks["dirs"], tmp_path / "a.tar.gz", K)
    b = submission.pack(masks["manifest"], masks["dirs"][::-1], tmp_path / "b.tar.gz", K)
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert a == b


def _break(kind: str, masks: dict[str, Any]) -> str:
    """Damage the shard folders one way; the text the error must contain."""
    d0, d1 = masks["dirs"]
    if kind == "missing":
        (d1 / "2008_000010.png").unlink()
        return "1 of 3 test images have no DeepLab mask .*2008_000010"
    if kind == "extra":
        Image.fromarray(np.zeros((3, 3), np.uint8)).save(d0 / "2011_000099.png")
        return "not in .*test.parquet: 2011_000099"
    if kind == "twice":
        (d0 / "2008_000010.png").write_bytes((d1 / "2008_000010.png").read_bytes())
        return "2008_000010.png occurs twice"
    if kind == "size":
        Image.fromarray(np.zeros((5, 7), np.uint8)).save(d1 / "2008_000010.png")
        return "2008_000010.png is 5x7, its image 5x6"
    if kind == "ignore":
        lab = masks["labels"]["2009_000001"].copy()
        lab[2, 2] = 255
        Image.fromarray(lab).save(d0 / "2009_000001.png")
        return "2009_000001.png has label 255; .* 0..20 only"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "extra", "twice", "size", "ignore"])
def test_a_bad_mask_set_is_refused_by_name_and_leaves_no_archive(
    kind: str, masks: dict[str, Any], tmp_path: Path
) -> None:
    pattern = _break(kind, masks)
    out = tmp_path / "sub" / "test.tar.gz"
    with pytest.raises(DataError, match=pattern):
        submission.pack(masks["manifest"], masks["dirs"], out, K)
    assert not out.parent.exists() or not list(out.parent.iterdir())


# ---------------------------------------------------------------- the unlabelled manifest


def _voc_cfg(root: Path, **extra: Any) -> dataset.DatasetConfig:
    return from_mapping(dataset.DatasetConfig, {"name": "voc12", "root": str(root), **extra}, "d")


def test_unlabelled_manifest_reads_images_only(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    ids = {"val": ["2008_000001"], "test": ["2009_000012", "2008_000003"]}
    fake_voc(root, ids, size=(6, 10), unlabelled=("test",))
    Image.new("RGB", (13, 11)).save(root / "JPEGImages" / "2008_000003.jpg")
    assert not (root / "Annotations" / "2008_000003.xml").exists()
    out = tmp_path / "test.parquet"
    dataset.run_unlabelled(_voc_cfg(root), "test", out)
    m = pd.read_parquet(out)
    assert m["image_id"].tolist() == ["2008_000003", "2009_000012"]
    assert [(h, w) for h, w in zip(m["height"], m["width"], strict=True)] == [(11, 13), (6, 10)]
    assert all(len(lab) == 0 for lab in m["labels"]) and set(m["gt_path"]) == {""}
    (root / "JPEGImages" / "2009_000012.jpg").unlink()
    with pytest.raises(DataError, match="2009_000012"):
        dataset.run_unlabelled(_voc_cfg(root), "test", out)
    with pytest.raises(DataError, match="nope.txt"):
        dataset.run_unlabelled(_voc_cfg(root), "nope", out)
    coco = from_mapping(dataset.DatasetConfig, {"name": "coco14", "root": str(root)}, "d")
    with pytest.raises(ConfigError, match="voc12"):
        dataset.run_unlabelled(coco, "test", out)


# ---------------------------------------------------------------- parse-time checks


def _config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "splits": {"train": "train_aug", "cam": ["train_aug"], "eval_cam": "train",
                   "val": "val", "test": "test"},
        "dataset": {"name": "voc12", "splits": ["train_aug", "train", "val"]},
        "deeplab": {"enabled": True},
    }  # fmt: skip
    for key, value in over.items():
        outer, inner = key.split("__")
        cfg[outer][inner] = value
    return cfg


def test_check_test_split_accepts_the_shipped_overlay() -> None:
    preflight.check_test_split(_config())
    preflight.check_test_split(_config(splits__test=""))
    preflight.check_test_split(_config(splits__test="", dataset__name="coco14"))


@pytest.mark.parametrize(
    ("over", "pattern"),
    [
        ({"dataset__name": "coco14"}, "splits.test .*dataset.name is 'coco14'"),
        ({"dataset__splits": ["train_aug", "train", "val", "test"]}, "also in dataset.splits"),
        ({"splits__test": "val"}, "cannot also be splits.val"),
        ({"splits__test": "train"}, "cannot also be splits.eval_cam"),
        ({"splits__test": "train_aug"}, "cannot also be splits.train"),
        ({"deeplab__enabled": False}, "deeplab.enabled is false"),
    ],
)
def test_check_test_split_refuses_by_key(over: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        preflight.check_test_split(_config(**over))


def test_run_summary_is_quoted_by_the_run_summary(masks: dict[str, Any], tmp_path: Path) -> None:
    from qaclims.report import summary

    run_dir = tmp_path / "results" / "voc12"
    out = run_dir / "submission" / "test.tar.gz"
    submission.run(masks["manifest"], masks["dirs"], out, out.with_suffix("").with_suffix(".json"),
                   K, "crf")  # fmt: skip
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert summary.submissions(run_dir) == [
        f"VOC server archive {out}: 3 masks (crf) under {TOP}, sha256 {digest}"
    ]
    assert summary.submissions(tmp_path) == []


def test_competition_names_the_folder(masks: dict[str, Any], tmp_path: Path) -> None:
    s = submission.pack(masks["manifest"], masks["dirs"], tmp_path / "c6.tar.gz", K, "comp6")
    with tarfile.open(tmp_path / "c6.tar.gz") as tar:
        files = [m.name for m in tar.getmembers() if m.isfile()]
    assert s["members"] == TOP.replace("comp5", "comp6")
    assert files == [f"{s['members']}/{i}.png" for i in sorted(SIZES)]
    with pytest.raises(ValueError, match="comp7"):
        submission.pack(masks["manifest"], masks["dirs"], tmp_path / "c7.tar.gz", K, "comp7")


def test_an_incomplete_test_set_is_warned_about(
    masks: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="qaclims.seg.submission"):
        submission.pack(masks["manifest"], masks["dirs"], tmp_path / "s.tar.gz", K)
    assert "holds 3 masks; VOC 2012's segmentation test set has 1456 images" in caplog.text
    caplog.clear()
    monkey = pytest.MonkeyPatch()
    monkey.setattr(submission, "VOC2012_TEST_IMAGES", 3)  # as if this were the whole set
    with caplog.at_level("WARNING", logger="qaclims.seg.submission"):
        submission.pack(masks["manifest"], masks["dirs"], tmp_path / "t.tar.gz", K)
    monkey.undo()
    assert "holds" not in caplog.text
