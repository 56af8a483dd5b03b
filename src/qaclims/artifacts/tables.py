"""The column schemas of the Parquet tables passed between stages, in one place.

Writers select exactly these columns in this order; readers ask for them by name, so a
table from another version fails with a message naming the file and the missing column
(:func:`qaclims.core.io.read_parquet`).
"""

from __future__ import annotations

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
