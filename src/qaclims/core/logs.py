"""Logging set-up shared by the workflow scripts: one log file per rule, plus the terminal.

Terminal lines carry the job's tag (``[make_cam cam/val/001]``) so the lines of parallel jobs
can be told apart; the log file, one per job, needs none.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def job_tag(rule: str, wildcards: Mapping[str, str] | None = None) -> str:
    """``"[rule a/b] "``: the prefix of a job's terminal lines (wildcard values in order)."""
    values = "/".join(str(v) for v in (wildcards or {}).values())
    return f"[{rule} {values}] " if values else f"[{rule}] "


def setup(
    log_path: str | Path | None = None, level: int = logging.INFO, tag: str = ""
) -> logging.Logger:
    """Send ``qaclims`` log records to ``log_path`` (appended) and to stderr (with ``tag``);
    those of :func:`provenance` to ``log_path`` only."""
    root = logging.getLogger("qaclims")
    root.setLevel(level)
    root.handlers.clear()
    root.propagate = False  # no second copy through handlers others put on the root logger
    term = logging.StreamHandler(sys.stderr)
    term.setFormatter(logging.Formatter(tag.replace("%", "%%") + FORMAT))
    root.addHandler(term)
    record = provenance()
    record.handlers.clear()
    record.propagate = False
    record.setLevel(logging.INFO)
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(log_path, mode="a")
        file.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(file)
        record.addHandler(file)
    return root


def provenance() -> logging.Logger:
    """The logger of a job's software and machine lines (:mod:`qaclims.core.provenance`):
    after :func:`setup`, its records go to the job's log file only, not to the terminal."""
    return logging.getLogger("qaclims.provenance")
