"""The manifest: one Parquet table per split listing every image of a data set.

Columns (see ``docs/ARCHITECTURE.md``): ``image_id: str``, ``image_path: str``,
``height: int64``, ``width: int64``, ``labels: list<int64>`` (sorted foreground class
indices ``0..C-1``, may be empty), ``gt_path: str`` (label PNG, ``""`` when the image has no
ground truth). Rows are sorted by ``image_id``. ``classes.json`` beside the manifests holds
``{"dataset": name, "classes": [names]}``.

This module also holds the checks the readers share: folders and split lists that must
exist, missing images (reported all at once, with a count and a few names) and image
headers read without decoding pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import PathLike, atomic_path, read_json, read_parquet, write_json

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    "image_path",
    "height",
    "width",
    "labels",
    "gt_path",
)
MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("image_path", pa.string()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("labels", pa.list_(pa.int64())),
        ("gt_path", pa.string()),
    ]
)
# How many offending file names an error message lists before "...".
NAMES_IN_ERROR = 5
# Bytes at the end of a JPEG searched for its end-of-image marker (allows short padding).
JPEG_TAIL_BYTES = 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

T = TypeVar("T")
R = TypeVar("R")


def shard_rows(df: pd.DataFrame, shard: int, num_shards: int) -> pd.DataFrame:
    """Shard ``shard`` of ``num_shards``: rows ``shard, shard + n, shard + 2n, ...`` of ``df``.

    The shards of a sorted manifest are disjoint, cover it, and keep its order. The result
    has a fresh ``0..len-1`` index. Raises :class:`ConfigError` unless ``0 <= shard < n``.
    """
    if num_shards < 1:
        raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise ConfigError(f"shard must be in [0, {num_shards}), got {shard}")
    return df.iloc[shard::num_shards].reset_index(drop=True)


def manifest_frame(rows: Iterable[dict[str, object]]) -> pd.DataFrame:
    """Rows (dicts with the manifest columns) as a manifest frame sorted by ``image_id``."""
    df = pd.DataFrame(list(rows), columns=list(MANIFEST_COLUMNS))
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def write_manifest(path: PathLike, df: pd.DataFrame) -> None:
    """Write a manifest atomically with the fixed schema (``labels`` as ``list<int64>``).

    Rows are sorted by ``image_id``; duplicate ids raise :class:`ValueError`.
    """
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"manifest {path} has duplicate image ids, e.g. {dup.iloc[0]}")
    df = df.sort_values("image_id", kind="stable")
    data = {c: df[c].tolist() for c in MANIFEST_COLUMNS}
    data["labels"] = [sorted(int(x) for x in labels) for labels in data["labels"]]
    table = pa.Table.from_pydict(data, schema=MANIFEST_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: PathLike) -> pd.DataFrame:
    """Read a manifest; a missing file or missing columns raise :class:`DataError` naming it.

    ``labels`` holds plain Python lists of ``int``; the other columns are as written.
    """
    df = read_parquet(path, columns=list(MANIFEST_COLUMNS))
    df["labels"] = [[int(x) for x in labels] for labels in df["labels"]]
    return df


def write_classes(path: PathLike, dataset: str, classes: Sequence[str]) -> None:
    """Write ``classes.json``: ``{"dataset": dataset, "classes": [names]}``, atomically."""
    write_json(path, {"dataset": dataset, "classes": list(classes)})


def read_classes(path: PathLike) -> list[str]:
    """The foreground class names (index ``c`` = label ``c + 1``) from ``classes.json``."""
    obj = read_json(path)
    classes = obj.get("classes") if isinstance(obj, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{path}: expected {{'classes': [names]}}, got {str(obj)[:200]}")
    if len(set(classes)) != len(classes):
        raise DataError(f"{path}: duplicate class names in {classes}")
    return classes


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise :class:`DataError` naming it."""
    if not path.is_dir():
        raise DataError(f"missing {what} folder: {path}")
    return path


def read_id_list(path: Path, split: str) -> list[str]:
    """Image ids of a split list file, one per line, in file order, duplicates dropped.

    A line may also be ``path/to/<id>.jpg [path/to/<id>.png]`` (SBD/mmseg style): the id is
    the stem of its first token. A missing file raises :class:`DataError` naming it.
    """
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise DataError(f"split {split!r}: missing split list {path} (lists there: {known})")
    ids: dict[str, None] = {}
    for line in path.read_text().splitlines():
        tokens = line.split()
        if tokens:
            tok = tokens[0]
            is_path = "/" in tok or tok.lower().endswith(IMAGE_SUFFIXES)
            ids[Path(tok).stem if is_path else tok] = None
    if not ids:
        raise DataError(f"split {split!r}: split list {path} is empty")
    return list(ids)


def raise_if_any(bad: Sequence[str], what: str, where: str) -> None:
    """Raise :class:`DataError` when ``bad`` is not empty: how many, and the first few."""
    if not bad:
        return
    shown = ", ".join(str(b) for b in bad[:NAMES_IN_ERROR])
    more = f" (and {len(bad) - NAMES_IN_ERROR} more)" if len(bad) > NAMES_IN_ERROR else ""
    raise DataError(f"{len(bad)} {what} {where}: {shown}{more}")


def check_exist(paths: Sequence[Path], what: str, where: str) -> None:
    """Raise :class:`DataError` listing every path of ``paths`` that is not a file."""
    raise_if_any([str(p) for p in paths if not p.is_file()], f"{what} missing", where)


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str) -> list[R]:
    """``[fn(x) for x in items]`` on ``workers`` threads (I/O bound work), with a progress bar."""
    if workers <= 1 or len(items) < 2:
        return [fn(x) for x in tqdm(items, desc=desc, leave=False)]
    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, leave=False))


def header_size(path: Path) -> tuple[int, int] | str:
    """``(height, width)`` from the image header (no pixel decoding), or an error string."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError) as e:
        return f"{path} ({type(e).__name__}: {e})"
    return h, w


def truncated(path: Path) -> bool:
    """Whether a JPEG/PNG file lacks its end marker (a truncated download or copy).

    JPEG: no ``FF D9`` in its last :data:`JPEG_TAIL_BYTES` bytes; PNG: no ``IEND`` chunk at
    its end. Other formats are never reported.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - JPEG_TAIL_BYTES))
        tail = f.read()
    if head.startswith(b"\xff\xd8"):
        return b"\xff\xd9" not in tail
    if head.startswith(b"\x89PNG"):
        return not tail.endswith(b"IEND\xaeB`\x82")
    return False


def _checked_size(path: Path) -> tuple[int, int] | str:
    size = header_size(path)
    if isinstance(size, tuple) and truncated(path):
        return f"{path} (truncated: no end-of-image marker)"
    return size


def image_sizes(
    paths: Sequence[Path], where: str, workers: int, check_complete: bool
) -> list[tuple[int, int]]:
    """``(height, width)`` of every image from its header, in order.

    ``check_complete`` also rejects truncated JPEG/PNG files (see :func:`truncated`).
    Unreadable files raise one :class:`DataError` that counts them and names a few.
    """
    fn = _checked_size if check_complete else header_size
    sizes = parallel_map(fn, paths, workers, f"image headers {where}")
    raise_if_any([s for s in sizes if isinstance(s, str)], "unreadable images", where)
    return [s for s in sizes if isinstance(s, tuple)]


def check_same_sizes(
    paths: Sequence[Path], sizes: Sequence[tuple[int, int]], what: str, where: str, workers: int
) -> None:
    """Raise :class:`DataError` when a file's header size differs from its expected size."""
    found = parallel_map(header_size, paths, workers, f"{what} headers {where}")
    bad = [
        f"{p} is {f[0]}x{f[1]}, expected {s[0]}x{s[1]}" if isinstance(f, tuple) else f
        for p, f, s in zip(paths, found, sizes, strict=True)
        if f != s
    ]
    raise_if_any(bad, f"{what} with a wrong size or unreadable", where)


def check_labels(df: pd.DataFrame, num_classes: int, where: Path, allow_empty: bool) -> None:
    """Raise :class:`DataError` naming the manifest and the first image whose labels are
    empty (unless ``allow_empty``) or outside ``[0, num_classes)``."""
    for image_id, labels in zip(df["image_id"], df["labels"], strict=True):
        if not labels and not allow_empty:
            raise DataError(f"manifest {where}: image {image_id} has no class label")
        bad = [v for v in labels if not 0 <= v < num_classes]
        if bad:
            raise DataError(
                f"manifest {where}: image {image_id} has labels {bad} outside 0..{num_classes - 1}"
            )


def read_labelled_manifest(path: Path, num_classes: int) -> pd.DataFrame:
    """Read a manifest for training (sorted by image_id); every image needs >= 1 label in
    ``[0, num_classes)`` and an existing image file. Errors name the manifest and image."""
    df = read_manifest(path).sort_values("image_id", ignore_index=True)
    if df.empty:
        raise DataError(f"manifest {path} has no images")
    check_labels(df, num_classes, path, allow_empty=False)
    check_exist([Path(p) for p in df["image_path"]], "images", f"in manifest {path}")
    return df


def multi_hot(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """``NxC float32`` with 1 at each listed class index."""
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    for i, labs in enumerate(labels):
        out[i, [int(v) for v in labs]] = 1.0
    return out
