"""PASCAL VOC 2012 (with SBD's train_aug list) and other trees with the VOC layout.

Layout under the data set root (folder names are config fields)::

    JPEGImages/<id>.jpg                  images
    SegmentationClass/<id>.png           label PNGs (0 bg, 1..20 classes, 255 ignore)
    ImageSets/Segmentation/<split>.txt   one image id per line (train_aug.txt: 10,582 ids)
    Annotations/<id>.xml                 detection annotations (image-level labels)

Image-level labels come either from the XML annotations, as IRN/CLIMS/QA-CLIMS do (every
``<object><name>`` that is a class; part names such as "head" are ignored), or from the
distinct values of the label PNG. ``gt_path`` is the label PNG when it exists, else ``""``
(train_aug images outside VOC train have no ``SegmentationClass`` mask). Heights and widths
come from the image headers.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qaclims.core.class_names import VOC_ANNOTATION_NAMES, VOC_CLASSES
from qaclims.core.config import setting
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_label_png
from qaclims.data import manifest as base

log = logging.getLogger(__name__)

IMAGE_SUFFIX = ".jpg"
LABEL_SOURCES = ("xml", "mask")
IGNORE = 255


@dataclass(frozen=True)
class Voc12Config:
    """Folder layout of a VOC-style tree, relative to ``dataset.root``.

    image_dir: folder of the ``<id>.jpg`` images.
    gt_dir: folder of the ``<id>.png`` label PNGs (VOC: SegmentationClass).
    split_dir: folder of the ``<split>.txt`` id lists (put train_aug.txt there).
    annotation_dir: folder of the ``<id>.xml`` annotations (read when label_source is xml).
    label_source: where image-level labels come from: ``xml`` (IRN's rule) or ``mask``
        (distinct values of the label PNG; every listed image then needs one).
    """

    image_dir: str = "JPEGImages"
    gt_dir: str = "SegmentationClass"
    split_dir: str = "ImageSets/Segmentation"
    annotation_dir: str = "Annotations"
    label_source: str = setting("xml", choices=LABEL_SOURCES)

    def __post_init__(self) -> None:
        if self.label_source not in LABEL_SOURCES:
            raise ConfigError(
                f"dataset.voc12.label_source must be one of {LABEL_SOURCES}, "
                f"got {self.label_source!r}"
            )


def xml_labels(path: Path, class_index: Mapping[str, int]) -> list[int]:
    """Sorted class indices of every ``<object><name>`` in a VOC XML that is a known class.

    Names are stripped; unknown names and ``<part>`` names are ignored. A corrupt file
    raises :class:`DataError` naming it.
    """
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise DataError(f"corrupt annotation file {path}: {e}") from e
    names = (obj.findtext("name", default="").strip() for obj in tree.iter("object"))
    return sorted({class_index[n] for n in names if n in class_index})


def mask_labels(path: Path, num_classes: int) -> list[int]:
    """Sorted class indices ``c`` whose label ``c + 1`` occurs in a label PNG.

    0 (background) and 255 (ignore) are skipped; any other value above ``num_classes``
    raises :class:`DataError` naming the file.
    """
    values = np.unique(read_label_png(path))
    bad = [int(v) for v in values if num_classes < v < IGNORE]
    if bad:
        raise DataError(f"label image {path} has values {bad} outside 0..{num_classes}, 255")
    return [int(v) - 1 for v in values if 1 <= v <= num_classes]


def check_layout(root: Path, cfg: Voc12Config, splits: Sequence[str]) -> dict[str, list[str]]:
    """Check the folders and read every split list, before any image is opened.

    Returns ``{split: [ids in file order]}``; raises :class:`DataError` naming a missing
    folder or split list.
    """
    base.require_dir(root, "data set root")
    base.require_dir(root / cfg.image_dir, "image")
    base.require_dir(root / cfg.gt_dir, "ground-truth mask")
    if cfg.label_source == "xml":
        base.require_dir(root / cfg.annotation_dir, "annotation")
    return {s: base.read_id_list(root / cfg.split_dir / f"{s}.txt", s) for s in splits}


def _labels(
    root: Path, ids: Sequence[str], cfg: Voc12Config, classes: Sequence[str], where: str
) -> list[list[int]]:
    if cfg.label_source == "mask":
        gts = [root / cfg.gt_dir / f"{i}.png" for i in ids]
        base.check_exist(gts, "label PNGs (label_source: mask)", where)
        return [mask_labels(p, len(classes)) for p in gts]
    xmls = [root / cfg.annotation_dir / f"{i}.xml" for i in ids]
    base.check_exist(xmls, "annotation files", where)
    index = {c: k for k, c in enumerate(classes)}
    if tuple(classes) == VOC_CLASSES:  # VOC's XML spells "diningtable", "tvmonitor", ...
        index |= {c: k for k, c in enumerate(VOC_ANNOTATION_NAMES)}
    return [xml_labels(p, index) for p in xmls]


def build_manifest(
    root: Path,
    split: str,
    ids: Sequence[str],
    cfg: Voc12Config,
    classes: Sequence[str],
    check_images: bool,
    workers: int,
    labelled: bool = True,
) -> pd.DataFrame:
    """The manifest of one split (columns of :data:`base.MANIFEST_COLUMNS`, sorted by id).

    ``ids`` come from :func:`check_layout`. Paths are ``root`` joined with the layout
    folders (relative when ``root`` is). ``check_images`` also rejects truncated images and
    label PNGs whose size differs from their image's. ``labelled=False`` (VOC's test split,
    whose annotations are withheld): only the images are read; every row has no labels and
    no ``gt_path``.
    """
    where = f"in split {split!r} ({root / cfg.split_dir / f'{split}.txt'})"
    images = [root / cfg.image_dir / f"{i}{IMAGE_SUFFIX}" for i in ids]
    base.check_exist(images, "images", where)
    labels = _labels(root, ids, cfg, classes, where) if labelled else [[] for _ in ids]
    gts = [root / cfg.gt_dir / f"{i}.png" for i in ids]
    has_gt = [labelled and g.is_file() for g in gts]
    sizes = base.image_sizes(images, where, workers, check_images)
    if check_images:
        pairs = [(g, s) for g, s, h in zip(gts, sizes, has_gt, strict=True) if h]
        base.check_same_sizes(
            [g for g, _ in pairs], [s for _, s in pairs], "label PNGs", where, workers
        )
    rows = [
        {"image_id": i, "image_path": str(p), "height": s[0], "width": s[1], "labels": lab,
         "gt_path": str(g) if h else ""}
        for i, p, s, lab, g, h in zip(ids, images, sizes, labels, gts, has_gt, strict=True)
    ]  # fmt: skip
    if labelled:
        log.info(
            "%s: %d images, %d with a label PNG, %d without any class label",
            split, len(rows), sum(has_gt), sum(not lab for lab in labels),
        )  # fmt: skip
    else:
        log.info("%s: %d images, unlabelled (no annotation or label PNG read)", split, len(rows))
    return base.manifest_frame(rows)
