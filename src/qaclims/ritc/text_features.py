"""text_features: CLIP text features of the QAPE corpus, each distinct phrase encoded once.

Every distinct phrase of ``corpus.parquet`` and every class name is encoded once with the
CLIP text encoder under the prompt (``"a photo of {}."``) and L2-normalised. The
foreground text feature of an (image, class) pair is then, as the reference's ``FG_VQA``::

    fg_text = w * class_feature + (1 - w) * mean(foreground answer features),  w = 0.5

where the mean runs over the answers of every question, duplicates included (a distinct
phrase weighs its corpus ``count``), not re-normalised; the class feature alone when the
pair has no foreground answer.

Outputs:

* ``features.safetensors``: tensor ``features`` (``R x E``, float32 or float16): rows
  ``0..P-1`` the distinct phrases (class names first, in class order; with the OV-Seg
  class tower the class names have rows of their own before every answer phrase), then one
  ``fg_text`` row per (image, class) pair of the corpus. Metadata: prompt, CLIP, classes.
* ``index.parquet``: ``image_id, class_index, class_name, kind, row, phrase`` with kind
  ``class`` (image_id ``""``; the class-name row), ``fg`` / ``bg`` (a corpus phrase's row)
  and ``fg_text`` (the mixed foreground feature of the pair; phrase ``""``).

Entry point: :func:`run`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from qaclims.artifacts import tables
from qaclims.artifacts.weights import write_tensors
from qaclims.core.config import runtime, setting
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_parquet, write_parquet
from qaclims.models.clip import ClipConfig, clip_metadata, load_clip, load_ovseg_text
from qaclims.models.clip_encode import encode_texts

log = logging.getLogger(__name__)

CORPUS_COLUMNS = list(tables.CORPUS_COLUMNS)
INDEX_COLUMNS = list(tables.TEXT_INDEX_COLUMNS)
KINDS = ("fg", "bg")
DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class TextFeatureConfig:
    """Config slice ``text_features``.

    prompt: template each phrase is put in (reference ``TEXT_PROMPT``).
    class_weight: weight of the class-name feature in the foreground text feature; the mean
        of the foreground answer features gets ``1 - class_weight`` (reference: 0.5).
    class_text: with ``clip.ovseg_checkpoint``: ``ovseg`` encodes the class names with the
        OV-Seg model's own text tower, as the reference (its ``FG_VQA`` labels go through
        the mask-adapted model it trains with, its answers through plain OpenAI CLIP);
        ``base`` uses the base tower for both. Without an OV-Seg checkpoint: no effect.
    batch_size: phrases per text-encoder batch.
    dtype: storage type of the features, ``float32`` or ``float16`` (half the size; COCO).
    """

    prompt: str = "a photo of {}."
    class_weight: float = setting(0.5, ge=0.0, le=1.0)
    class_text: str = setting("ovseg", choices=("ovseg", "base"))
    batch_size: int = runtime(256, ge=1)
    dtype: str = setting("float32", choices=tuple(DTYPES))


def check_config(cfg: TextFeatureConfig) -> None:
    """Raise :class:`ConfigError` naming the key of a bad value."""
    if "{}" not in cfg.prompt:
        raise ConfigError(f"text_features.prompt must contain '{{}}', got {cfg.prompt!r}")
    if not 0.0 <= cfg.class_weight <= 1.0:
        raise ConfigError(f"text_features.class_weight must be in [0, 1], got {cfg.class_weight}")
    if cfg.batch_size < 1:
        raise ConfigError(f"text_features.batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"text_features.dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")


def read_corpus(path: Path, classes: list[str]) -> pd.DataFrame:
    """The corpus table, checked: known kinds and class names, non-empty string phrases."""
    df = read_parquet(path, columns=CORPUS_COLUMNS)[CORPUS_COLUMNS]
    bad_kind = sorted(set(df["kind"]) - set(KINDS))
    if bad_kind:
        raise DataError(f"corpus {path}: unknown kind {bad_kind} (expected fg or bg)")
    bad_class = sorted(set(df["class_name"]) - set(classes))
    if bad_class:
        raise DataError(f"corpus {path}: class names {bad_class[:5]} are not in {classes}")
    phrases = df["phrase"]
    if not all(isinstance(p, str) and p.strip() for p in phrases):
        raise DataError(f"corpus {path}: empty or non-string phrases")
    counts = df["count"]
    if not pd.api.types.is_integer_dtype(counts) or (counts < 1).any():
        raise DataError(f"corpus {path}: column count must hold integers >= 1")
    return df.astype({"image_id": str, "count": "int64"}).reset_index(drop=True)


def distinct_phrases(classes: list[str], phrases: pd.Series) -> list[str]:
    """Class names (in class order), then the other distinct phrases, sorted."""
    rest = sorted(set(phrases) - set(classes))
    return list(classes) + rest


def build_index(
    corpus: pd.DataFrame,
    classes: list[str],
    rows: dict[str, int],
    class_rows: dict[str, int] | None = None,
) -> pd.DataFrame:
    """The index rows of kinds ``class``, ``fg`` and ``bg`` (``fg_text`` rows come later),
    with :data:`INDEX_COLUMNS` plus ``count`` (a phrase's answers in the corpus; 1 for the
    class rows). ``rows``: feature row of each phrase; ``class_rows``: of each class name
    (default: ``rows``, one encoding of a text whether class or answer)."""
    class_rows = rows if class_rows is None else class_rows
    cidx = {c: i for i, c in enumerate(classes)}
    head = pd.DataFrame(
        {
            "image_id": "",
            "class_index": range(len(classes)),
            "class_name": classes,
            "kind": "class",
            "row": [class_rows[c] for c in classes],
            "phrase": classes,
            "count": 1,
        }
    )
    key = ["image_id", "class_name", "kind", "phrase"]
    body = corpus.groupby(key, sort=False, as_index=False)["count"].sum()
    body["class_index"] = [cidx[c] for c in body["class_name"]]
    body["row"] = [rows[p] for p in body["phrase"]]
    out = pd.concat([head, body[[*INDEX_COLUMNS, "count"]]], ignore_index=True)
    return out.astype({"class_index": "int64", "row": "int64", "count": "int64"})


def foreground_mix(
    phrase_feats: torch.Tensor, index: pd.DataFrame, class_weight: float
) -> tuple[pd.DataFrame, torch.Tensor]:
    """One ``fg_text`` row per (image, class) pair of the corpus: ``w * class + (1-w) * mean
    of its fg answer features``, each distinct phrase weighted by its ``count`` (the mean
    over all answers, duplicates included, as the reference), the class feature alone
    without fg phrases. ``index`` is :func:`build_index`'s frame (with ``count``). Returns
    the index rows (``row`` numbered after the phrases) and their ``M x E`` features."""
    class_row = dict(
        zip(
            index.loc[index.kind == "class", "class_index"],
            index.loc[index.kind == "class", "row"],
            strict=True,
        )
    )
    pairs = index[index.kind != "class"]
    fg = pairs[pairs.kind == "fg"]
    fg_rows = fg.groupby(["image_id", "class_index"])["row"].apply(list)
    fg_counts = fg.groupby(["image_id", "class_index"])["count"].apply(list)
    keys = sorted(set(zip(pairs["image_id"], pairs["class_index"], strict=True)))
    feats = torch.empty(len(keys), phrase_feats.shape[1])
    for i, key in enumerate(keys):
        cls = phrase_feats[class_row[key[1]]]
        ans = fg_rows.get(key)
        if not ans:
            feats[i] = cls
            continue
        w = torch.tensor(fg_counts[key], dtype=phrase_feats.dtype)
        mean = (w[:, None] * phrase_feats[ans]).sum(dim=0) / w.sum()
        feats[i] = class_weight * cls + (1.0 - class_weight) * mean
    names = {int(k): v for k, v in zip(index["class_index"], index["class_name"], strict=True)}
    rows = pd.DataFrame(
        {
            "image_id": [k[0] for k in keys],
            "class_index": [int(k[1]) for k in keys],
            "class_name": [names[int(k[1])] for k in keys],
            "kind": "fg_text",
            "row": np.arange(len(keys), dtype=np.int64) + phrase_feats.shape[0],
            "phrase": "",
        }
    )
    return rows, feats


def _write_features(
    path: Path,
    feats: torch.Tensor,
    cfg: TextFeatureConfig,
    clip_cfg: ClipConfig,
    classes: list[str],
    num_phrases: int,
) -> None:
    meta = {
        "prompt": cfg.prompt,
        "class_weight": str(cfg.class_weight),
        "classes": json.dumps(classes),
        "num_phrases": str(num_phrases),
        **clip_metadata(clip_cfg),
    }
    write_tensors(path, {"features": feats.to(DTYPES[cfg.dtype])}, meta)


def run(
    corpus: Path,
    classes: list[str],
    clip_cfg: ClipConfig,
    cfg: TextFeatureConfig,
    out_features: Path,
    out_index: Path,
    device: str,
    clip_weights: Path | None = None,
) -> None:
    """Encode the corpus of ``corpus.parquet`` (columns image_id, class_name, kind, phrase);
    write ``out_features`` (safetensors) and ``out_index`` (Parquet), see the module docs.

    ``classes``: foreground class names (``classes.json`` order). ``clip_weights``: whole-model
    safetensors for the tiny CLIP (``clip.name: tiny``); ``device``: ``auto|cpu|cuda``.
    """
    check_config(cfg)
    if len(set(classes)) != len(classes) or not classes:
        raise DataError(f"classes must be distinct and non-empty, got {classes}")
    table = read_corpus(Path(corpus), list(classes))
    own_tower = bool(clip_cfg.ovseg_checkpoint) and cfg.class_text == "ovseg"
    if own_tower:  # class names get their own rows: another text tower encodes them
        answers = sorted(set(table["phrase"]))
        phrases = list(classes) + answers
        rows = {p: len(classes) + i for i, p in enumerate(answers)}
        class_rows: dict[str, int] | None = {c: i for i, c in enumerate(classes)}
    else:
        phrases = distinct_phrases(list(classes), table["phrase"])
        rows, class_rows = {p: i for i, p in enumerate(phrases)}, None
    index = build_index(table, list(classes), rows, class_rows)
    model, _, tokenizer = load_clip(clip_cfg, torch_device(device), clip_weights)
    log.info("text_features: %d corpus rows, %d distinct phrases", len(table), len(phrases))
    texts = [cfg.prompt.format(p) for p in phrases]
    if own_tower:
        n = len(classes)
        answer_feats = encode_texts(model, tokenizer, texts[n:], cfg.batch_size, progress=True)
        load_ovseg_text(model, clip_cfg.ovseg_checkpoint)
        class_feats = encode_texts(model, tokenizer, texts[:n], cfg.batch_size)
        feats = torch.cat([class_feats, answer_feats])
    else:
        feats = encode_texts(model, tokenizer, texts, cfg.batch_size, progress=True)
    mix_rows, mix = foreground_mix(feats, index, cfg.class_weight)
    _write_features(
        Path(out_features), torch.cat([feats, mix]), cfg, clip_cfg, list(classes), len(phrases)
    )
    write_parquet(out_index, pd.concat([index, mix_rows], ignore_index=True)[INDEX_COLUMNS])
    log.info(
        "text_features: wrote %s (%d rows) and %s",
        out_features,
        len(phrases) + len(mix_rows),
        out_index,
    )
