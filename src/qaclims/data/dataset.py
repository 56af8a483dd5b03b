"""The dataset stage: per-split manifests and ``classes.json`` for VOC 2012, COCO 2014 or
the synthetic world.

``run(cfg, out_dir)`` writes ``out_dir/classes.json`` and ``out_dir/manifest/<split>.parquet``
for every split of ``cfg.splits`` (format: :mod:`qaclims.data.manifest`). Everything cheap
(folders, split lists, annotation files, missing images) is checked before anything
expensive (headers, masks) is read or written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from qaclims.core.config import runtime, setting
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import PathLike
from qaclims.data import coco as coco_ds
from qaclims.data import manifest as base
from qaclims.data import voc
from qaclims.data.coco import Coco14Config
from qaclims.data.manifest import read_classes, read_manifest, shard_rows
from qaclims.data.voc import VOC_CLASSES, Voc12Config

log = logging.getLogger(__name__)

DATASETS = ("voc12", "coco14", "synthetic")
# The synthetic tree always has the default VOC layout, with labels from its masks.
SYNTHETIC_LAYOUT = Voc12Config(label_source="mask")

__all__ = [
    "DATASETS",
    "Coco14Config",
    "DatasetConfig",
    "Voc12Config",
    "read_classes",
    "read_manifest",
    "run",
    "run_unlabelled",
    "shard_rows",
]


@dataclass(frozen=True)
class DatasetConfig:
    """Which data set to read, where, and which splits.

    name: voc12, coco14 or synthetic (a VOC-layout tree written by the synthetic stage,
        labels from its masks, classes from its classes.json).
    root: the data set's folder (VOC: .../VOC2012; COCO: the folder holding train2014/,
        val2014/ and annotations/); manifest paths are joined to it as given, so a
        relative root gives relative paths.
    splits: splits to write a manifest for (VOC: train_aug, train, val; COCO: train, val).
    voc12: VOC layout and label source (name voc12; a synthetic tree always has the
        default layout and mask labels).
    coco14: COCO layout and where its evaluation masks go.
    check_images: open every image header to catch unreadable or truncated files (and,
        VOC, label PNGs of the wrong size; COCO, sizes that differ from the JSON's).
        VOC/synthetic sizes always come from the headers.
    io_workers: threads reading image headers.
    """

    name: str = setting("voc12", choices=DATASETS)
    root: str = ""
    splits: tuple[str, ...] = setting(("train_aug", "train", "val"), min_items=1)
    voc12: Voc12Config = Voc12Config()
    coco14: Coco14Config = Coco14Config()
    check_images: bool = runtime(True)
    io_workers: int = runtime(8, ge=1)

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ConfigError(f"dataset.name must be one of {DATASETS}, got {self.name!r}")
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ConfigError(f"dataset.splits must be distinct and non-empty: {self.splits}")
        if self.io_workers < 1:
            raise ConfigError(f"dataset.io_workers must be >= 1, got {self.io_workers}")


def _run_voc_layout(cfg: DatasetConfig, out: Path) -> list[str]:
    root = Path(cfg.root)
    layout = SYNTHETIC_LAYOUT if cfg.name == "synthetic" else cfg.voc12
    ids = voc.check_layout(root, layout, cfg.splits)
    classes = read_classes(root / "classes.json") if cfg.name == "synthetic" else VOC_CLASSES
    for split in cfg.splits:
        df = voc.build_manifest(
            root, split, ids[split], layout, classes, cfg.check_images, cfg.io_workers
        )
        base.write_manifest(out / "manifest" / f"{split}.parquet", df)
    return list(classes)


def _run_coco(cfg: DatasetConfig, out: Path, workers: int = 1) -> list[str]:
    root = Path(cfg.root)
    coco_ds.check_layout(root, cfg.coco14, cfg.splits)
    mask_root = Path(cfg.coco14.mask_dir) if cfg.coco14.mask_dir else out / "coco_masks"
    classes: list[str] | None = None
    for split in cfg.splits:
        path = coco_ds.annotation_path(root, cfg.coco14, split)
        coco = coco_ds.load_coco(path)
        names = coco_ds.categories(coco)[1]
        if classes is not None and names != classes:
            raise DataError(f"{path}: categories differ from split {cfg.splits[0]!r}'s")
        classes = names
        df = coco_ds.build_manifest(
            root, split, coco, cfg.coco14, mask_root, cfg.check_images, cfg.io_workers, workers
        )
        base.write_manifest(out / "manifest" / f"{split}.parquet", df)
        del coco
    assert classes is not None
    return classes


def run_unlabelled(cfg: DatasetConfig, split: str, out_manifest: PathLike) -> None:
    """Write the manifest of an unlabelled VOC split (VOC's test: images only, its
    annotations are withheld) to ``out_manifest``: every row has no labels and no
    ``gt_path``; nothing but the split list and the images is read.

    Raises :class:`ConfigError` unless ``cfg.name`` is voc12, :class:`DataError` naming a
    missing split list or image.
    """
    if cfg.name != "voc12":
        raise ConfigError(
            f"an unlabelled split ({split!r}) needs dataset.name voc12, got {cfg.name!r}"
        )
    if not cfg.root:
        raise ConfigError("dataset.root is empty: set it to the data set's folder")
    root = Path(cfg.root)
    base.require_dir(root, "data set root")
    base.require_dir(root / cfg.voc12.image_dir, "image")
    ids = base.read_id_list(root / cfg.voc12.split_dir / f"{split}.txt", split)
    df = voc.build_manifest(
        root, split, ids, cfg.voc12, VOC_CLASSES, cfg.check_images, cfg.io_workers,
        labelled=False,
    )  # fmt: skip
    base.write_manifest(out_manifest, df)


def run(cfg: DatasetConfig, out_dir: PathLike, workers: int = 1) -> None:
    """Write ``out_dir/classes.json`` and ``out_dir/manifest/<split>.parquet`` per split.

    ``workers``: processes writing COCO's evaluation masks (the job's threads).

    Raises :class:`~qaclims.core.errors.ConfigError` for an empty ``dataset.root`` and
    :class:`~qaclims.core.errors.DataError` naming a missing folder, split list, annotation
    file or image (all missing images of a split at once: how many, and a few names).
    """
    if not cfg.root:
        raise ConfigError("dataset.root is empty: set it to the data set's folder")
    out = Path(out_dir)
    log.info("dataset %s at %s, splits %s", cfg.name, cfg.root, list(cfg.splits))
    classes = _run_coco(cfg, out, workers) if cfg.name == "coco14" else _run_voc_layout(cfg, out)
    base.write_classes(out / "classes.json", cfg.name, classes)
