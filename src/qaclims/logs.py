"""Logging set-up shared by the workflow scripts: one log file per rule, plus stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup(log_path: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send ``qaclims`` log records to ``log_path`` (appended) and to stderr."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger("qaclims")
    root.setLevel(level)
    root.handlers.clear()
    root.propagate = False  # no second copy through handlers others put on the root logger
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    return root
