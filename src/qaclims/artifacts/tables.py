"""The column schemas of the Parquet tables passed between stages, in one place.

Writers select exactly these columns in this order; readers ask for them by name, so a
table from another version fails with a message naming the file and the missing column
(:func:`qaclims.core.io.read_parquet`).
"""

from __future__ import annotations

import pandas as pd

#: vqa's answers, one row per (image, present class, question): ``kind`` is fg or bg
ANSWER_COLUMNS: tuple[str, ...] = ("image_id", "class_name", "kind", "question", "answer")
#: vqa's answer cache (answers of one model, re-used across runs)
CACHE_COLUMNS: tuple[str, ...] = ("image_id", "class_name", "question", "model", "answer")
#: corpus: the phrases of each (image, class), ``count`` = answers that gave the phrase
CORPUS_COLUMNS: tuple[str, ...] = ("image_id", "class_name", "kind", "phrase", "count")
#: text_features' index: which feature row holds each (image, class) phrase or class name
TEXT_INDEX_COLUMNS: tuple[str, ...] = (
    "image_id", "class_index", "class_name", "kind", "row", "phrase",
)  # fmt: skip

#: per-epoch, per-class dead-CAM counts of train_ritc's history (:func:`dead_cam_shares`)
DEAD_COLUMNS: tuple[str, ...] = ("epoch", "class_index", "pairs", "dead", "share")


def dead_cam_shares(history: pd.DataFrame) -> pd.DataFrame:
    """Per epoch and class, train_ritc's pairs and those whose CAM was dead, from the
    history's ``pairs:<c>`` / ``dead:<c>`` columns (one row per step). Columns
    :data:`DEAD_COLUMNS`; ``share = dead / pairs`` in [0, 1]; classes without pairs in an
    epoch are left out. Empty when the history has no such columns (older runs)."""
    classes = sorted(int(c.split(":")[1]) for c in history.columns if c.startswith("pairs:"))
    if not classes or "epoch" not in history.columns:
        return pd.DataFrame({c: [] for c in DEAD_COLUMNS})
    by_epoch = history.groupby(history["epoch"].astype(int))
    rows = []
    for c in classes:
        sums = by_epoch[[f"pairs:{c}", f"dead:{c}"]].sum()
        for epoch, (pairs, dead) in sums.iterrows():
            if pairs > 0:
                rows.append((int(epoch), c, int(pairs), int(dead), float(dead / pairs)))
    out = pd.DataFrame(rows, columns=list(DEAD_COLUMNS))
    return out.sort_values(["epoch", "class_index"], ignore_index=True)
