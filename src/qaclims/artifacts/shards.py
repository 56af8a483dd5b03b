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
