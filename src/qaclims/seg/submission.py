"""voc_submission: DeepLab's masks of an unlabelled split as a PASCAL VOC server archive.

The PASCAL VOC evaluation server scores the segmentation test set (1,456 images whose labels
are withheld) from a tar of ``results/VOC2012/Segmentation/<competition>_test_cls/<id>.png``:
one single-channel palette PNG per test image, at the image's size, whose indices are the
classes (0 background, 1..20). The server's competitions are ``comp5`` (trained on VOC data
only) and ``comp6`` (own data); CLIMS's ``segmentation/deeplabv2/eval.py``, the DeepLab code
of the QA-CLIMS authors' lab, writes ``comp5_test_cls``, the default here (workflow key
``submission.competition``).

:func:`pack` reads the ``infer_deeplab`` shard folders of the split, checks that there is
exactly one mask per manifest image (none missing, none extra, none twice), each at its
image's size with values in ``[0, num_classes)``, and writes the archive: entries in id
order with fixed owner, mode and time, gzip without a time stamp, so the same masks always
give the same bytes (its sha256 goes into the summary).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from qaclims.artifacts.shards import NAMES_IN_ERROR, files_for, index_files
from qaclims.core.errors import DataError
from qaclims.core.io import (
    PathLike,
    atomic_path,
    encode_label_png,
    read_label_png,
    read_parquet,
    write_json,
)

log = logging.getLogger(__name__)

COMPETITIONS = ("comp5", "comp6")
COMPETITION = "comp5"
VOC2012_TEST_IMAGES = 1456  # ImageSets/Segmentation/test.txt of VOC2012test.tar


def member_dir(competition: str = COMPETITION) -> PurePosixPath:
    """``results/VOC2012/Segmentation/<competition>_test_cls``: where the server looks."""
    return PurePosixPath("results", "VOC2012", "Segmentation", f"{competition}_test_cls")


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_IN_ERROR])
    return shown + (f", ... ({len(names)} in all)" if len(names) > NAMES_IN_ERROR else "")


def _check_mask(path: Path, label: np.ndarray, hw: tuple[int, int], num_classes: int) -> None:
    if label.shape != hw:
        raise DataError(
            f"mask {path} is {label.shape[0]}x{label.shape[1]}, its image {hw[0]}x{hw[1]}"
        )
    top = int(label.max(initial=0))
    if top >= num_classes:
        raise DataError(
            f"mask {path} has label {top}; a submission holds classes 0..{num_classes - 1} only"
        )


def _dir_entry(name: PurePosixPath) -> tarfile.TarInfo:
    info = tarfile.TarInfo(f"{name}/")
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    return info


def _file_entry(name: PurePosixPath, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(str(name))
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


def pack(
    manifest: PathLike,
    pred_dirs: Sequence[PathLike],
    out_tar: PathLike,
    num_classes: int,
    competition: str = COMPETITION,
) -> dict[str, Any]:
    """Write the server archive of ``manifest``'s images to ``out_tar`` (``.tar.gz``).

    ``pred_dirs``: folders of ``<image_id>.png`` label PNGs (``HxW uint8``, values in
    ``[0, num_classes)``, ``num_classes`` with background: 21 for VOC), together exactly
    one per manifest image. Each is re-encoded as a VOC-palette PNG under
    :func:`member_dir`. Returns ``{"images", "competition", "members", "sha256"}``.

    Raises :class:`DataError` naming the missing or extra ids, a mask of the wrong size or
    with a label out of range; no archive is left behind then.
    """
    if competition not in COMPETITIONS:
        raise ValueError(f"competition must be one of {COMPETITIONS}, got {competition!r}")
    rows = read_parquet(manifest, ["image_id", "height", "width"]).sort_values(
        "image_id", ignore_index=True
    )
    ids = [str(i) for i in rows["image_id"]]
    dirs = [Path(d) for d in pred_dirs]
    paths = files_for(ids, dirs, ".png", "DeepLab mask", "test images")
    extra = sorted(set(index_files(dirs, ".png", "DeepLab mask")) - set(ids))
    if extra:
        raise DataError(f"masks of images not in {manifest}: {_few(extra)}")
    top = member_dir(competition)
    with atomic_path(out_tar) as tmp:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for parent in reversed(top.parents[:-1]):
                tar.addfile(_dir_entry(parent))
            tar.addfile(_dir_entry(top))
            for image_id, path, h, w in zip(ids, paths, rows["height"], rows["width"], strict=True):
                label = read_label_png(path)
                _check_mask(path, label, (int(h), int(w)), num_classes)
                data = encode_label_png(label)
                tar.addfile(_file_entry(top / f"{image_id}.png", len(data)), io.BytesIO(data))
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
    log.info("%s: %d masks under %s, sha256 %s", out_tar, len(ids), top, digest)
    if len(ids) != VOC2012_TEST_IMAGES:
        log.warning(
            "%s holds %d masks; VOC 2012's segmentation test set has %d images, and the "
            "server scores complete sets only",
            out_tar, len(ids), VOC2012_TEST_IMAGES,
        )  # fmt: skip
    return {
        "images": len(ids),
        "competition": competition,
        "members": str(top),
        "sha256": digest,
    }


def run(
    manifest: PathLike,
    pred_dirs: Sequence[PathLike],
    out_tar: PathLike,
    out_summary: PathLike,
    num_classes: int,
    variant: str,
    competition: str = COMPETITION,
) -> None:
    """:func:`pack`, then its summary plus ``variant`` (``crf`` or ``nocrf``: which of
    infer_deeplab's masks) as JSON at ``out_summary``."""
    summary = pack(manifest, pred_dirs, out_tar, num_classes, competition)
    write_json(out_summary, {**summary, "variant": variant, "archive": Path(out_tar).name})
