"""The text features train_ritc reads: text_features' outputs looked up by (image, class)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qaclims.artifacts.weights import read_tensors
from qaclims.core.errors import DataError
from qaclims.core.io import read_parquet

log = logging.getLogger(__name__)

#: the columns of text_features' index (:data:`qaclims.artifacts.tables.TEXT_INDEX_COLUMNS`)
#: that the text bank reads
INDEX_COLUMNS = ["image_id", "class_index", "kind", "row"]


@dataclass
class TextBank:
    """Text features on the training device, looked up by (image_id, class index).

    features: ``R x E float32``; fg: pair -> its ``fg_text`` row; bg: pair -> its bg phrase
    rows; class_rows: class index -> class-name row (fallback foreground feature).
    """

    features: torch.Tensor
    fg: dict[tuple[str, int], int]
    bg: dict[tuple[str, int], list[int]]
    class_rows: list[int]

    @classmethod
    def load(cls, index: Path, features: Path, num_classes: int, device: torch.device) -> TextBank:
        """Read text_features' outputs; inconsistencies raise :class:`DataError` naming them."""
        df = read_parquet(index, columns=INDEX_COLUMNS)
        if not Path(features).is_file():
            raise DataError(f"missing text features: {features}")
        feats = read_tensors(features).get("features")
        if feats is None or feats.ndim != 2:
            raise DataError(f"{features} has no 2-D tensor 'features'")
        if len(df) and int(df["row"].max()) >= feats.shape[0]:
            raise DataError(f"index {index} points past the {feats.shape[0]} rows of {features}")
        classes = df[df.kind == "class"].sort_values("class_index")
        if list(classes["class_index"]) != list(range(num_classes)):
            raise DataError(
                f"index {index} has class rows {list(classes['class_index'])}, "
                f"expected 0..{num_classes - 1}"
            )
        keys = list(zip(df["image_id"].astype(str), df["class_index"].astype(int), strict=True))
        fg: dict[tuple[str, int], int] = {}
        bg: dict[tuple[str, int], list[int]] = {}
        for key, kind, row in zip(keys, df["kind"], df["row"].astype(int), strict=True):
            if kind == "fg_text":
                fg[key] = row
            elif kind == "bg":
                bg.setdefault(key, []).append(row)
        rows = [int(r) for r in classes["row"]]
        return cls(feats.float().to(device), fg, bg, rows)

    def gather(
        self, keys: Sequence[tuple[str, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``P`` pairs: fg text ``PxE``, bg phrases ``PxLxE`` (padded), valid ``PxL bool``."""
        fg_rows = [self.fg.get(k, self.class_rows[k[1]]) for k in keys]
        bg_rows = [self.bg.get(k, []) for k in keys]
        width = max([1, *(len(r) for r in bg_rows)])
        padded = torch.zeros(len(keys), width, dtype=torch.long)
        valid = torch.zeros(len(keys), width, dtype=torch.bool)
        for i, rows in enumerate(bg_rows):
            padded[i, : len(rows)] = torch.tensor(rows, dtype=torch.long)
            valid[i, : len(rows)] = True
        dev = self.features.device
        fg = self.features[torch.tensor(fg_rows, dtype=torch.long, device=dev)]
        return fg, self.features[padded.to(dev)], valid.to(dev)


def check_text_width(bank: TextBank, path: Path, clip: nn.Module, name: str) -> None:
    """Raise :class:`DataError` naming ``path`` if its text features are not as wide as the
    embedding of the CLIP the regions are encoded with (features of another CLIP)."""
    proj = getattr(clip, "text_projection", None)
    width = proj.shape[-1] if isinstance(proj, torch.Tensor) else None
    if width is not None and bank.features.shape[1] != width:
        raise DataError(
            f"text features {path} are {bank.features.shape[1]} wide, but CLIP {name} embeds "
            f"in {width}: they were made with another CLIP (rerun text_features)"
        )
