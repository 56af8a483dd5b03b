"""The dataset stage on tiny VOC and COCO trees written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from qaclims.core.config import from_mapping
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_label_png, write_label_png
from qaclims.data import dataset as datasets
from qaclims.data.manifest import (
    MANIFEST_COLUMNS,
    read_classes,
    read_manifest,
    shard_rows,
    write_manifest,
)
from qaclims.data.voc import VOC_CLASSES

# ----------------------------------------------------------------------------- VOC tree

# id -> (height, width, class names in the XML (with repeats), mask rectangles or None)
# A rectangle is (class name, y0, y1, x0, x1); 2008_000003 has no object at all.
VOC_IMAGES: dict[str, tuple[int, int, list[str], list[tuple[str, int, int, int, int]] | None]] = {
    "2007_000001": (16, 20, ["person", "aeroplane", "person"],
                    [("aeroplane", 1, 6, 1, 9), ("person", 8, 15, 10, 18)]),
    "2007_000002": (12, 18, ["dog"], [("dog", 2, 10, 3, 12)]),
    "2008_000003": (10, 10, [], []),
    "2009_000004": (14, 11, ["cat", "chair"], None),
}  # fmt: skip


def _xml(names: list[str]) -> str:
    objs = "".join(
        f"<object><name> {n} </name><difficult>0</difficult><part><name>head</name></part></object>"
        for n in names
    )
    return f"<annotation><filename>x.jpg</filename>{objs}</annotation>"


def _mask(h: int, w: int, rects: list[tuple[str, int, int, int, int]]) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for name, y0, y1, x0, x1 in rects:
        m[y0:y1, x0:x1] = VOC_CLASSES.index(name) + 1
        m[y0, x0:x1] = 255  # a void band, as in SegmentationClass
    return m


def _expected_labels(image_id: str) -> list[int]:
    return sorted({VOC_CLASSES.index(n) for n in VOC_IMAGES[image_id][2]})


@pytest.fixture()
def voc(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w, names, rects) in VOC_IMAGES.items():
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"{i}.jpg", quality=90)
        (root / "Annotations" / f"{i}.xml").write_text(_xml(names))
        if rects is not None:
            write_label_png(root / "SegmentationClass" / f"{i}.png", _mask(h, w, rects))
    lists = root / "ImageSets/Segmentation"
    (lists / "train.txt").write_text("2007_000002\n2008_000003\n2007_000001\n")
    (lists / "train_aug.txt").write_text(
        "2007_000002\n/JPEGImages/2009_000004.jpg /SegmentationClassAug/2009_000004.png\n"
        "2008_000003\n2007_000001\n2007_000002\n"
    )
    (lists / "val.txt").write_text("2007_000001\n")
    return root


def _cfg(root: Path | str, splits: tuple[str, ...], **kw: object) -> datasets.DatasetConfig:
    return from_mapping(
        datasets.DatasetConfig,
        {"name": "voc12", "root": str(root), "splits": list(splits), **kw},
        "dataset",
    )


def test_voc_manifest_rows_columns_sizes_and_gt(voc: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    datasets.run(_cfg(voc, ("train_aug", "val")), out)
    df = read_manifest(out / "manifest" / "train_aug.parquet")
    assert tuple(df.columns) == MANIFEST_COLUMNS
    assert list(df.image_id) == sorted(VOC_IMAGES)  # sorted, duplicate line dropped
    for row in df.itertuples():
        h, w, _, rects = VOC_IMAGES[row.image_id]
        assert (row.height, row.width) == (h, w)
        assert row.labels == _expected_labels(row.image_id)
        assert row.image_path == str(voc / "JPEGImages" / f"{row.image_id}.jpg")
        gt = "" if rects is None else str(voc / "SegmentationClass" / f"{row.image_id}.png")
        assert row.gt_path == gt
    schema = pq.read_schema(out / "manifest" / "train_aug.parquet")
    assert str(schema.field("labels").type) == "list<element: int64>"
    assert list(read_manifest(out / "manifest" / "val.parquet").image_id) == ["2007_000001"]
    assert json.loads((out / "classes.json").read_text()) == {
        "dataset": "voc12",
        "classes": list(VOC_CLASSES),
    }
    assert len(read_classes(out / "classes.json")) == 20


def test_voc_labels_from_xml_equal_labels_from_mask(voc: Path, tmp_path: Path) -> None:
    datasets.run(_cfg(voc, ("train",)), tmp_path / "x")
    datasets.run(_cfg(voc, ("train",), voc12={"label_source": "mask"}), tmp_path / "m")
    by_xml = read_manifest(tmp_path / "x" / "manifest" / "train.parquet")
    by_mask = read_manifest(tmp_path / "m" / "manifest" / "train.parquet")
    assert by_xml.labels.tolist() == by_mask.labels.tolist()
    assert by_xml.labels.tolist() == [_expected_labels(i) for i in sorted(by_xml.image_id)]
    assert [] in by_xml.labels.tolist()  # the image without objects keeps empty labels


def test_voc_relative_root_gives_relative_readable_paths(
    voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    datasets.run(_cfg("VOC2012", ("train",)), "data")
    df = read_manifest("data/manifest/train.parquet")
    for p in [*df.image_path, *(g for g in df.gt_path if g)]:
        assert not Path(p).is_absolute() and p.startswith("VOC2012/") and Path(p).is_file()


def test_voc_missing_images_are_counted_and_named(voc: Path, tmp_path: Path) -> None:
    (voc / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images missing .*2007_000002\.jpg"):
        datasets.run(_cfg(voc, ("train",)), tmp_path / "out")
    ids = [f"2010_{k:06d}" for k in range(8)]
    (voc / "ImageSets/Segmentation/many.txt").write_text("\n".join(ids))
    with pytest.raises(DataError, match=r"^8 images missing .*many\.txt.*2010_000000\.jpg.*3 more"):
        datasets.run(_cfg(voc, ("many",)), tmp_path / "out")
    assert not (tmp_path / "out" / "classes.json").exists()


def test_voc_missing_split_list_or_folder_is_named_before_any_output(
    voc: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/nope\.txt"):
        datasets.run(_cfg(voc, ("train", "nope")), out)
    assert not out.exists()  # train was not written either: lists are checked first
    (voc / "Annotations" / "2007_000001.xml").unlink()
    with pytest.raises(DataError, match=r"annotation files missing .*2007_000001\.xml"):
        datasets.run(_cfg(voc, ("train",)), out)
    for f in (voc / "Annotations").iterdir():
        f.unlink()
    (voc / "Annotations").rmdir()
    with pytest.raises(DataError, match=r"missing annotation folder: .*Annotations"):
        datasets.run(_cfg(voc, ("train",)), out)


def test_voc_corrupt_inputs_are_named(voc: Path, tmp_path: Path) -> None:
    jpg = voc / "JPEGImages" / "2007_000002.jpg"
    data = jpg.read_bytes()
    jpg.write_bytes(data[:-20])  # header intact, end-of-image marker gone
    with pytest.raises(DataError, match=r"2007_000002\.jpg \(truncated"):
        datasets.run(_cfg(voc, ("train",)), tmp_path / "a")
    datasets.run(_cfg(voc, ("train",), check_images=False), tmp_path / "b")  # header only
    jpg.write_bytes(data)
    write_label_png(voc / "SegmentationClass" / "2007_000002.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match=r"2007_000002\.png is 5x5, expected 12x18"):
        datasets.run(_cfg(voc, ("train",)), tmp_path / "c")
    write_label_png(voc / "SegmentationClass" / "2007_000002.png", np.full((12, 18), 30, np.uint8))
    with pytest.raises(DataError, match=r"2007_000002\.png has values \[30\]"):
        datasets.run(_cfg(voc, ("train",), voc12={"label_source": "mask"}), tmp_path / "d")


# -------------------------------------------------------------------- manifest helpers


def test_shard_rows_partition_the_manifest_in_order() -> None:
    df = pd.DataFrame({"image_id": [f"im{i:02d}" for i in range(11)]})
    for n in (1, 3, 4, 11, 13):
        shards = [shard_rows(df, k, n) for k in range(n)]
        for k, sh in enumerate(shards):
            assert sh.image_id.tolist() == [f"im{i:02d}" for i in range(11) if i % n == k]
            assert sh.index.tolist() == list(range(len(sh)))
        assert sorted(sum((s.image_id.tolist() for s in shards), [])) == df.image_id.tolist()
    for k, n in ((-1, 3), (3, 3), (0, 0)):
        with pytest.raises(ConfigError):
            shard_rows(df, k, n)


def test_manifest_readers_name_bad_files(tmp_path: Path) -> None:
    df = pd.DataFrame({"image_id": ["b", "a"], "image_path": ["b.jpg", "a.jpg"],
                       "height": [1, 2], "width": [3, 4], "labels": [[], [2, 0]],
                       "gt_path": ["", ""]})  # fmt: skip
    write_manifest(tmp_path / "m.parquet", df)
    back = read_manifest(tmp_path / "m.parquet")
    assert back.image_id.tolist() == ["a", "b"] and back.labels.tolist() == [[0, 2], []]
    df.drop(columns="gt_path").to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet lacks columns \['gt_path'\]"):
        read_manifest(tmp_path / "bad.parquet")
    (tmp_path / "classes.json").write_text('{"classes": "cat"}')
    with pytest.raises(DataError, match=r"classes\.json"):
        read_classes(tmp_path / "classes.json")


def test_config_errors_name_the_key(voc: Path, tmp_path: Path) -> None:
    cfg = _cfg(voc, ("train",), coco14={"mask_dir": "m"}, voc12={"gt_dir": "G"})
    assert (cfg.coco14.mask_dir, cfg.voc12.gt_dir, cfg.voc12.image_dir) == ("m", "G", "JPEGImages")
    bad: list[tuple[dict[str, object], str]] = [
        ({"voc12": {"bogus": 1}}, "dataset.voc12.bogus"),
        ({"name": "imagenet"}, "dataset.name"),
        ({"voc12": {"label_source": "json"}}, "dataset.voc12.label_source"),
        ({"coco14": {"image_dir": "{year}"}}, "dataset.coco14.image_dir"),
        ({"splits": []}, "dataset.splits"),
    ]
    for mapping, key in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            from_mapping(datasets.DatasetConfig, mapping, "dataset")
    with pytest.raises(ConfigError, match=r"dataset\.root"):
        datasets.run(datasets.DatasetConfig(), tmp_path)


# ----------------------------------------------------------------------------- COCO tree

# Category ids are non-contiguous and listed out of order in the file.
COCO_CATS = [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}]


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """A polygon covering pixels x0 <= x < x1, y0 <= y < y1 (pycocotools' rasterisation)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _coco_json(split: str) -> dict[str, object]:
    def ann(i: int, img: int, cat: int, seg: object, crowd: int = 0) -> dict[str, object]:
        return {"id": i, "image_id": img, "category_id": cat, "segmentation": seg,
                "iscrowd": crowd, "area": 1.0, "bbox": [0, 0, 1, 1]}  # fmt: skip

    name = f"COCO_{split}2014_{{:012d}}.jpg".format
    return {
        "images": [
            {"id": 42, "file_name": name(42), "height": 8, "width": 10},
            {"id": 7, "file_name": name(7), "height": 4, "width": 6},
            {"id": 99, "file_name": name(99), "height": 5, "width": 5},  # no annotation
        ],
        "categories": COCO_CATS,
        "annotations": [
            ann(1, 42, 3, _rect(1, 1, 6, 5)),  # cat
            ann(2, 7, 17, _rect(0, 1, 3, 4)),  # dog in the other image
            ann(3, 42, 17, _rect(4, 3, 9, 7)),  # dog, overlaps the cat: dog wins
            # crowd toothbrush: columns 8-9 (column-major RLE); stays background, and the
            # dog it overlaps (column 8) stays dog
            ann(4, 42, 90, {"counts": [64, 16], "size": [8, 10]}, crowd=1),
            ann(5, 42, 3, _rect(5, 4, 7, 6)),  # a second cat, on the dog: the cat wins
        ],
    }


def _coco_expected(image_id: int) -> np.ndarray:
    if image_id == 7:
        m = np.zeros((4, 6), np.uint8)
        m[1:4, 0:3] = 2
        return m
    m = np.zeros((8, 10), np.uint8)
    m[1:5, 1:6] = 1  # cat (index 0: category 3 is the smallest id)
    m[3:7, 4:9] = 2  # dog (index 1: id 17)
    m[4:6, 5:7] = 1  # the later cat
    return m


@pytest.fixture()
def coco(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        js = _coco_json(split)
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(js))
        (root / f"{split}2014").mkdir()
        for im in js["images"]:  # type: ignore[attr-defined]
            size = (im["width"], im["height"])
            Image.new("RGB", size, (9, 99, 199)).save(root / f"{split}2014" / im["file_name"])
    return root


def _coco_cfg(root: Path, splits: tuple[str, ...] = ("val",)) -> datasets.DatasetConfig:
    return datasets.DatasetConfig(name="coco14", root=str(root), splits=splits)


def test_coco_labels_contiguous_and_masks_by_hand(coco: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    datasets.run(_coco_cfg(coco, ("train", "val")), out)
    assert read_classes(out / "classes.json") == ["cat", "dog", "toothbrush"]
    df = read_manifest(out / "manifest" / "val.parquet")
    ids = ["COCO_val2014_000000000007", "COCO_val2014_000000000042"]
    assert df.image_id.tolist() == ids  # image 99 (no annotation) dropped
    assert df.labels.tolist() == [[1], [0, 1, 2]]  # crowd toothbrush is in the labels
    assert (df.height.tolist(), df.width.tolist()) == ([4, 8], [6, 10])
    for row, num in zip(df.itertuples(), (7, 42), strict=True):
        assert row.image_path == str(coco / "val2014" / f"{row.image_id}.jpg")
        assert row.gt_path == str(out / "coco_masks" / "val" / f"{row.image_id}.png")
        np.testing.assert_array_equal(read_label_png(row.gt_path), _coco_expected(num))
    assert len(read_manifest(out / "manifest" / "train.parquet")) == 2


def test_coco_existing_masks_are_kept_and_errors_named(coco: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    keep = masks / "val" / "COCO_val2014_000000000042.png"
    write_label_png(keep, np.full((8, 10), 3, np.uint8))
    cfg = datasets.DatasetConfig(
        name="coco14",
        root=str(coco),
        splits=("val",),
        coco14=datasets.Coco14Config(mask_dir=str(masks)),
    )
    datasets.run(cfg, tmp_path / "data")
    assert (read_label_png(keep) == 3).all()  # resumed, not rewritten
    np.testing.assert_array_equal(
        read_label_png(masks / "val" / "COCO_val2014_000000000007.png"), _coco_expected(7)
    )
    with pytest.raises(DataError, match=r"instances_test2014\.json"):
        datasets.run(_coco_cfg(coco, ("val", "test")), tmp_path / "t")
    (coco / "val2014" / "COCO_val2014_000000000042.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images missing .*COCO_val2014_000000000042\.jpg"):
        datasets.run(_coco_cfg(coco), tmp_path / "u")


def test_voc_class_names_are_text_and_xml_spellings_map_to_them(voc: Path, tmp_path: Path) -> None:
    """classes.json holds the reference's text names ("dining table", ...); VOC's XML
    spellings without spaces still label the image."""
    (voc / "Annotations" / "2007_000002.xml").write_text(
        _xml(["diningtable", "pottedplant", "tvmonitor", "dog"])
    )
    out = tmp_path / "data"
    datasets.run(_cfg(voc, ("train",)), out)
    names = json.loads((out / "classes.json").read_text())["classes"]
    assert [names[i] for i in (10, 15, 19)] == ["dining table", "potted plant", "tv monitor"]
    assert all(" " not in n or n in {"dining table", "potted plant", "tv monitor"} for n in names)
    df = read_manifest(out / "manifest" / "train.parquet").set_index("image_id")
    assert df.loc["2007_000002", "labels"] == [10, 11, 15, 19]  # dog is 11


def test_coco_masks_from_worker_processes_equal_one_process(coco: Path, tmp_path: Path) -> None:
    datasets.run(_coco_cfg(coco, ("train", "val")), tmp_path / "one", workers=1)
    datasets.run(_coco_cfg(coco, ("train", "val")), tmp_path / "two", workers=2)
    one = sorted((tmp_path / "one" / "coco_masks").rglob("*.png"))
    two = sorted((tmp_path / "two" / "coco_masks").rglob("*.png"))
    assert len(one) == 4 and [p.name for p in one] == [p.name for p in two]
    for a, b in zip(one, two, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    for num in (7, 42):
        png = tmp_path / "two" / "coco_masks" / "val" / f"COCO_val2014_{num:012d}.png"
        np.testing.assert_array_equal(read_label_png(png), _coco_expected(num))
