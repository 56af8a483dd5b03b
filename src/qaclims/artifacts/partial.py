"""Partial folders: where a sharded stage writes a shard's files before the shard is done.

``.<out_dir name>.partial`` beside ``out_dir`` holds the finished files of an interrupted
run; a rerun keeps them only if they were made from the same settings and inputs (by
content: the caller passes everything that shapes the files, see
:func:`qaclims.training.fingerprint`), else the folder is emptied with a log line. When the
shard is complete the folder is renamed onto ``out_dir`` in one step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: the stamp file holding the digest of what the folder's files were made from
STAMP = ".config.json"


def partial_path(out_dir: Path) -> Path:
    """``.<out_dir name>.partial`` beside ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.partial"


class PartialDir:
    """``.<out_dir name>.partial`` beside ``out_dir``: finished files of an interrupted run,
    valid for one config (the convention of make_cam).

    A stamp file holds the config's fingerprint; a partial folder of another config is
    emptied, temporary files of interrupted writes are removed. :meth:`finish` removes the
    stamp and renames the folder onto ``out_dir``.
    """

    def __init__(self, out_dir: Path, config: dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.path = partial_path(self.out_dir)
        stamp = self.path / STAMP
        tag = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        if self.path.is_dir() and (not stamp.is_file() or json.loads(stamp.read_text()) != tag):
            log.warning("discarding %s: written under other settings or inputs", self.path)
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        for p in self.path.iterdir():
            if p.name.startswith(".") and p.name != STAMP:
                p.unlink()
        stamp.write_text(json.dumps(tag))

    def done(self, name: str) -> bool:
        return (self.path / name).is_file()

    def finish(self) -> None:
        (self.path / STAMP).unlink(missing_ok=True)
        if self.out_dir.exists():
            log.warning("replacing existing output folder %s", self.out_dir)
            shutil.rmtree(self.out_dir)
        os.replace(self.path, self.out_dir)
