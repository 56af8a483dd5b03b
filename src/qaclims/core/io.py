"""Atomic, pickle-free reading and writing of the artefacts passed between stages.

Every writer writes to a temporary name in the destination folder and renames it into
place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from qaclims.core.errors import DataError

PathLike = str | os.PathLike[str]


def current_umask() -> int:
    """The process's file-mode creation mask (read without changing it where Linux allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)  # no /proc: set and restore (not thread-safe, but only a fallback)
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file keeps ``path``'s suffix (or ``suffix``) so writers that choose a
    format by extension still work. The file gets the mode a plain ``open()`` would give
    (``0666`` less the umask), not ``mkstemp``'s private ``0600``, so lab mates on a shared
    file system can read results. On an exception the temporary file is removed and
    ``path`` is left untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix or "".join(dest.suffixes)
    )
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():  # writers that replace the file (safetensors) lose the mode
            tmp_path.chmod(0o666 & ~current_umask())
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def files_digest(paths: Sequence[PathLike]) -> str:
    """sha256 over the names and bytes of ``paths`` in the given order (label PNGs, CAM
    files: the inputs a resume state or a partial folder was made from)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{Path(p).name}|".encode())
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_yaml(path: PathLike, obj: Any) -> None:
    """Write ``obj`` (plain mappings, lists, scalars) as block-style YAML, atomically."""
    import yaml

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def read_json(path: PathLike) -> Any:
    """Read a JSON file; a missing or corrupt file raises :class:`DataError` naming it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing JSON file: {p}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"corrupt JSON file {p}: {e}") from e


def write_parquet(path: PathLike, df: pd.DataFrame) -> None:
    """Write a data frame as Parquet (pyarrow), atomically, without the pandas index."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_parquet(path: PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet table; names the file if missing or if ``columns`` are absent."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing table: {p}")
    df = pd.read_parquet(p)
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"table {p} lacks columns {missing}; it has {list(df.columns)}")
    return df


def write_npz(path: PathLike, arrays: Mapping[str, np.ndarray], compress: bool = False) -> None:
    """Write named arrays to ``.npz`` atomically. Object arrays are refused (no pickle)."""
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; refusing to pickle it")
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            save = np.savez_compressed if compress else np.savez
            save(f, **dict(arrays))  # type: ignore[arg-type]


def read_npz(path: PathLike, only: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read the arrays of an ``.npz`` file into memory (``allow_pickle=False``): all, or
    those of ``only`` that the file holds (the others are not read)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing array file: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if only is None or k in only}
    except (ValueError, OSError) as e:
        raise DataError(f"corrupt array file {p}: {e}") from e


def read_image(path: PathLike) -> np.ndarray:
    """Read an image as ``HxWx3 uint8 RGB``; a missing or corrupt file raises naming it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing image: {p}")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"corrupt or unreadable image {p}: {e}") from e


def read_label_png(path: PathLike) -> np.ndarray:
    """Read a single-channel label PNG as ``HxW uint8`` (0 background, 1..C classes, 255 ignore).

    Palette PNGs (VOC style) give their palette indices, which are the labels.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing label image: {p}")
    try:
        with Image.open(p) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DataError(f"label image {p} has mode {im.mode}; expected P or L")
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"corrupt or unreadable label image {p}: {e}") from e


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened), as in the devkit."""
    pal = []
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _label_image(label: np.ndarray) -> Image.Image:
    lab = np.asarray(label)
    if lab.ndim != 2 or lab.dtype != np.uint8:
        raise ValueError(f"label must be HxW uint8, got shape {lab.shape} dtype {lab.dtype}")
    im = Image.fromarray(lab, mode="P")
    im.putpalette(voc_palette())
    return im


def write_label_png(path: PathLike, label: np.ndarray) -> None:
    """Write ``HxW uint8`` labels as a VOC-palette PNG, atomically (readable as indices)."""
    im = _label_image(label)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def encode_label_png(label: np.ndarray) -> bytes:
    """The bytes :func:`write_label_png` writes for ``label`` (``HxW uint8``)."""
    buf = io.BytesIO()
    _label_image(label).save(buf, format="PNG")
    return buf.getvalue()


def write_image(path: PathLike, image: np.ndarray, quality: int = 95) -> None:
    """Write an ``HxWx3 uint8`` RGB image (JPEG or PNG by extension), atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, quality=quality)
