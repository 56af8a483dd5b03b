"""Per-image files of sharded stages: the one index over shard folders.

A sharded stage writes ``<stage>/<split>/<shard>/<image_id><suffix>``; its readers get the
list of shard folders and look images up by id. Shards are disjoint by construction, so an
id found in two folders means a stale or foreign folder: that is an error naming both
files (never "first wins" or "last wins").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from qaclims.core.errors import DataError

NAMES_IN_ERROR = 5


def index_files(dirs: Sequence[Path], suffix: str, what: str) -> dict[str, Path]:
    """``image_id -> <dir>/<image_id><suffix>`` over ``dirs``.

    Raises :class:`DataError` naming a folder that does not exist (``what`` says whose) or
    an id that occurs in two folders.
    """
    found: dict[str, Path] = {}
    for d in map(Path, dirs):
        if not d.is_dir():
            raise DataError(f"missing {what} folder: {d}")
        with os.scandir(d) as it:
            for e in it:
                if not e.name.endswith(suffix) or e.name.startswith("."):
                    continue
                stem = e.name[: -len(suffix)]
                if stem in found:
                    raise DataError(
                        f"{stem}{suffix} occurs twice: {found[stem]} and {e.path} "
                        f"(a stale {what} folder?)"
                    )
                found[stem] = Path(e.path)
    return found


def files_for(
    ids: Sequence[str], dirs: Sequence[Path], suffix: str, what: str, images: str = "images"
) -> list[Path]:
    """``<dir>/<id><suffix>`` of each id of ``ids`` over the shard folders ``dirs``, in order
    (:func:`index_files`). Ids without a file raise :class:`DataError` counting them and
    naming the first few: ``"3 of 6 images have no pseudo mask (.png) in [...], e.g. ..."``.
    """
    index = index_files(dirs, suffix, what)
    missing = [i for i in ids if i not in index]
    if missing:
        where = ", ".join(map(str, dirs))
        eg = ", ".join(f"{m}{suffix}" for m in missing[:NAMES_IN_ERROR])
        raise DataError(
            f"{len(missing)} of {len(ids)} {images} have no {what} ({suffix}) in [{where}], "
            f"e.g. {eg}"
        )
    return [index[i] for i in ids]
