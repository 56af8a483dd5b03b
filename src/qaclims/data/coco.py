"""MS COCO 2014 for WSSS: image-level labels and evaluation masks from ``instances_*.json``.

- Classes: the annotation file's categories in category-id order, remapped to contiguous
  indices ``0..79`` (label PNG value ``c + 1``); names are COCO's own ("person", ...).
  Every split must list the same categories.
- Image-level labels: the categories of **all** annotations of the image, crowd ones
  included (as CLIMS' ``mscoco/dataloader.py`` does), so a class present only as a crowd
  region is in the labels but not in the mask.
- Images without any annotation are dropped (as the usual WSSS lists do: 82,081 train and
  40,137 val images remain); how many is logged.
- Masks: one label PNG per image, ``<mask_dir>/<split>/<image_id>.png``: 0 background,
  ``c + 1`` for non-crowd annotations painted in file order, so a later annotation
  overwrites an earlier one where they overlap; crowd regions stay background (CLIMS'
  ``annToMask.py`` rule). A mask that already exists is not written again (resume).
- Image id: the image file's stem, e.g. ``COCO_val2014_000000000042``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pycocotools.coco import COCO
from tqdm import tqdm

from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import write_label_png
from qaclims.data import manifest as base

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Coco14Config:
    """Layout of a COCO 2014 tree, relative to ``dataset.root``; ``{split}`` is replaced.

    image_dir: folder of a split's images.
    annotation_file: a split's instances JSON.
    mask_dir: where the evaluation label PNGs are written (``<mask_dir>/<split>/<id>.png``);
        empty: ``<dataset output folder>/coco_masks``.
    """

    image_dir: str = "{split}2014"
    annotation_file: str = "annotations/instances_{split}2014.json"
    mask_dir: str = ""

    def __post_init__(self) -> None:
        for key in ("image_dir", "annotation_file"):
            try:
                getattr(self, key).format(split="train")
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(
                    f"dataset.coco14.{key}: only the placeholder {{split}} is allowed, "
                    f"got {getattr(self, key)!r}"
                ) from e


def annotation_path(root: Path, cfg: Coco14Config, split: str) -> Path:
    """The instances JSON of ``split``."""
    return root / cfg.annotation_file.format(split=split)


def check_layout(root: Path, cfg: Coco14Config, splits: Sequence[str]) -> None:
    """Check the root, every split's image folder and annotation file exist (cheap, first)."""
    base.require_dir(root, "data set root")
    for split in splits:
        ann = annotation_path(root, cfg, split)
        if not ann.is_file():
            raise DataError(f"split {split!r}: missing COCO annotation file {ann}")
        base.require_dir(root / cfg.image_dir.format(split=split), f"split {split!r} image")


def load_coco(path: Path) -> COCO:
    """Load an instances JSON with pycocotools (its prints silenced); errors name the file."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (json.JSONDecodeError, KeyError, TypeError, OSError) as e:
        raise DataError(f"corrupt COCO annotation file {path}: {e!r}") from e


def categories(coco: COCO) -> tuple[list[int], list[str]]:
    """``(category ids, names)`` sorted by id: index ``c`` is contiguous class ``c``."""
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    return [int(c["id"]) for c in cats], [str(c["name"]) for c in cats]


def image_labels(anns: Sequence[Mapping[str, Any]], cat_index: Mapping[int, int]) -> list[int]:
    """Sorted contiguous class indices of all annotations (crowd included) of one image."""
    return sorted({cat_index[int(a["category_id"])] for a in anns})


def label_map(coco: COCO, img_id: int, cat_index: Mapping[int, int]) -> np.ndarray:
    """``HxW uint8`` label map of one image: 0 background, ``c + 1`` class ``c``.

    Non-crowd annotations are painted in file order (last wins); crowd ones are skipped.
    """
    info = coco.imgs[img_id]
    label = np.zeros((int(info["height"]), int(info["width"])), np.uint8)
    for ann in coco.imgToAnns[img_id]:
        if ann.get("iscrowd", 0) or not ann.get("segmentation"):
            continue
        label[coco.annToMask(ann) > 0] = cat_index[int(ann["category_id"])] + 1
    return label


def _check_categories(coco: COCO, cat_index: Mapping[int, int], where: Path) -> None:
    used = {int(a["category_id"]) for a in coco.dataset.get("annotations", [])}
    unknown = sorted(used - set(cat_index))
    if unknown:
        raise DataError(f"{where}: annotations use unknown category ids {unknown[:10]}")


def _kept_images(coco: COCO, cat_index: Mapping[int, int], split: str) -> list[dict[str, Any]]:
    """Image records with at least one annotation, each with its ``labels``, sorted by id."""
    kept = []
    for img_id, info in coco.imgs.items():
        labels = image_labels(coco.imgToAnns.get(img_id, []), cat_index)
        if labels:
            kept.append({**info, "labels": labels, "image_id": Path(info["file_name"]).stem})
    log.info(
        "%s: kept %d images, dropped %d without any annotation",
        split, len(kept), len(coco.imgs) - len(kept),
    )  # fmt: skip
    return sorted(kept, key=lambda r: r["image_id"])


_FORKED: dict[str, Any] = {}


def _write_mask(item: tuple[int, str]) -> None:
    """One mask in a forked worker (the annotations are inherited, not pickled)."""
    write_label_png(Path(item[1]), label_map(_FORKED["coco"], item[0], _FORKED["cat_index"]))


def write_masks(
    coco: COCO, records: Sequence[Mapping[str, Any]], paths: Sequence[Path],
    cat_index: Mapping[int, int], workers: int = 1,
) -> int:  # fmt: skip
    """Write the label PNG of every record whose path does not exist yet; return how many.

    ``workers > 1``: that many forked processes share the work (rasterising polygons and
    encoding PNGs hold the GIL); the files are the same as with one.
    """
    todo = [(int(r["id"]), str(p)) for r, p in zip(records, paths, strict=True) if not p.is_file()]
    bar = tqdm(total=len(todo), desc="COCO masks", leave=False)
    if workers > 1 and len(todo) > 1 and "fork" in mp.get_all_start_methods():
        _FORKED.update(coco=coco, cat_index=cat_index)
        try:
            with mp.get_context("fork").Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_mask, todo, chunksize=32):
                    bar.update()
        finally:
            _FORKED.clear()
    else:
        for ann_id, path in todo:
            write_label_png(Path(path), label_map(coco, ann_id, cat_index))
            bar.update()
    bar.close()
    return len(todo)


def _check_image_files(
    images: Sequence[Path], sizes: Sequence[tuple[int, int]], where: str, workers: int
) -> None:
    """Open every header (rejecting truncated files); its size must match the JSON's."""
    found = base.image_sizes(images, where, workers, check_complete=True)
    bad = [
        f"{p} is {f[0]}x{f[1]}, the annotation file says {s[0]}x{s[1]}"
        for p, f, s in zip(images, found, sizes, strict=True)
        if f != s
    ]
    base.raise_if_any(bad, "images with a wrong size", where)


def build_manifest(
    root: Path,
    split: str,
    coco: COCO,
    cfg: Coco14Config,
    mask_root: Path,
    check_images: bool,
    workers: int,
    mask_workers: int = 1,
) -> pd.DataFrame:
    """The manifest of one split; writes the split's missing evaluation masks.

    ``check_images`` opens every image header and compares its size with the JSON's
    (``workers`` threads); ``mask_workers`` processes write the masks.
    """
    ids, _ = categories(coco)
    cat_index = {cid: k for k, cid in enumerate(ids)}
    ann_file = annotation_path(root, cfg, split)
    _check_categories(coco, cat_index, ann_file)
    records = _kept_images(coco, cat_index, split)
    where = f"in split {split!r} ({ann_file})"
    images = [root / cfg.image_dir.format(split=split) / r["file_name"] for r in records]
    base.check_exist(images, "images", where)
    sizes = [(int(r["height"]), int(r["width"])) for r in records]
    if check_images:
        _check_image_files(images, sizes, where, workers)
    masks = [mask_root / split / f"{r['image_id']}.png" for r in records]
    n = write_masks(coco, records, masks, cat_index, mask_workers)
    log.info("%s: wrote %d masks under %s (%d existed)", split, n, mask_root, len(masks) - n)
    rows = [
        {"image_id": r["image_id"], "image_path": str(p), "height": s[0], "width": s[1],
         "labels": r["labels"], "gt_path": str(m)}
        for r, p, s, m in zip(records, images, sizes, masks, strict=True)
    ]  # fmt: skip
    return base.manifest_frame(rows)
