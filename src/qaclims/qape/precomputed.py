"""vqa's precomputed backend: the answers of the authors' released ``.npy`` files (through
the restricted loader) or of an answer table, looked up per (image, class, question) and
checked to cover every question asked."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from qaclims.artifacts.tables import ANSWER_COLUMNS
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_parquet
from qaclims.data.manifest import raise_if_any
from qaclims.qape.safe_load import load_npy_dict
from qaclims.qape.vqa_config import KEY, VqaConfig

log = logging.getLogger(__name__)


def _pair_key(name: str) -> str:
    """Class names compared loosely: case, spaces and underscores ignored."""
    return name.lower().replace(" ", "").replace("_", "")


def _npy_answers(
    path: Path, templates: Sequence[str], field: str = "answers"
) -> tuple[dict[tuple[str, str, str], str], set[str]]:
    """The authors' ``{image: {class: {"vqa": [(template, raw answer)], "answers":
    [lemmatised answer]}}}`` as a map ``(image_id, class key, template) -> answer`` (only
    the configured templates; ``field``: ``answers``, the lemmatised answer at the
    template's position in ``vqa``, as the reference reads it, or ``vqa``, the raw one),
    and the file's image names."""
    data = load_npy_dict(path)
    wanted = set(templates)
    out: dict[tuple[str, str, str], str] = {}
    for image_id, per_class in data.items():
        if not isinstance(per_class, dict):
            raise DataError(f"{path}: entry {image_id!r} is not a dict of classes")
        for cls, entry in per_class.items():
            pairs = entry.get("vqa") if isinstance(entry, dict) else None
            if not isinstance(pairs, list | tuple):
                raise DataError(f"{path}: entry {image_id!r}/{cls!r} has no 'vqa' list")
            lemmas = entry.get("answers")
            if field == "answers" and not (
                isinstance(lemmas, list | tuple) and len(lemmas) == len(pairs)
            ):
                raise DataError(
                    f"{path}: entry {image_id!r}/{cls!r} has no 'answers' list as long as its "
                    "'vqa' list (set vqa.precomputed.answer_field: vqa to read raw answers)"
                )
            for i, qa in enumerate(pairs):
                if not (isinstance(qa, list | tuple) and len(qa) == 2):
                    raise DataError(f"{path}: {image_id!r}/{cls!r}: bad (question, answer)")
                if qa[0] in wanted:
                    answer = lemmas[i] if field == "answers" else qa[1]
                    out[(str(image_id), _pair_key(cls), qa[0])] = answer
    return out, set(data)


def _table_answers(path: Path, kind: str) -> tuple[dict[tuple[str, str, str], str], set[str]]:
    """An answers table as ``(image_id, class key, question) -> answer`` for one kind; a
    question may be stored filled in or as its template (both are keys); and the table's
    image ids."""
    df = read_parquet(path, columns=list(ANSWER_COLUMNS))
    images = set(df["image_id"].astype(str))
    df = df[df["kind"] == kind]
    table = {
        (str(i), _pair_key(c), str(q)): str(a)
        for i, c, q, a in zip(
            df["image_id"], df["class_name"], df["question"], df["answer"], strict=True
        )
    }
    return table, images


def _lookup(
    table: dict[tuple[str, str, str], str], items: pd.DataFrame, templates: Sequence[str]
) -> list[str | None]:
    """Answer of each item, by its filled-in question or else its template."""
    by_fill = {t.format(c): t for c in items["class_name"].unique() for t in templates}
    out: list[str | None] = []
    for i, c, q in zip(items["image_id"], items["class_name"], items["question"], strict=True):
        k = _pair_key(c)
        a = table.get((i, k, q))
        out.append(a if a is not None else table.get((i, k, by_fill[q])))
    return out


def precomputed_path(cfg: VqaConfig, kind: str) -> Path:
    """The ``kind`` answer file of the precomputed backend; it must exist."""
    path_str = getattr(cfg.precomputed, kind)
    if not path_str:
        raise ConfigError(f"config key vqa.precomputed.{kind} is empty (backend precomputed)")
    path = Path(path_str)
    if not path.is_file():
        raise DataError(f"missing answer file {path} (vqa.precomputed.{kind})")
    return path


def precomputed_answers(
    cfg: VqaConfig, kind: str, all_items: pd.DataFrame, templates: Sequence[str]
) -> pd.Series:
    """Answers of ``all_items`` (every pair of the data set) from the configured file.

    Raises :class:`DataError` naming the file when images, classes or questions of the
    data set are missing from it (with counts and a few names).
    """
    path = precomputed_path(cfg, kind)
    if cfg.precomputed.format == "qaclims_npy":
        table, images = _npy_answers(path, templates, cfg.precomputed.answer_field)
    else:
        table, images = _table_answers(path, kind)
    answers = _lookup(table, all_items, templates)
    _check_coverage(path, all_items, answers, images)
    return pd.Series(answers, index=all_items.index, dtype=object)


def _check_coverage(
    path: Path, items: pd.DataFrame, answers: list[str | None], file_images: set[str]
) -> None:
    """Missing images, then missing (image, class, question) answers, as one DataError."""
    wanted = list(dict.fromkeys(items["image_id"]))
    missing_img = [i for i in wanted if i not in file_images]
    raise_if_any(missing_img, f"of the data set's {len(wanted)} images are", f"missing from {path}")
    missing = [
        f"{i}/{c}: {q!r}"
        for (i, c, q), a in zip(items[KEY].itertuples(index=False), answers, strict=True)
        if a is None
    ]
    raise_if_any(missing, "(image, class, question) answers are", f"missing from {path}")
    extra = len(file_images - set(wanted))
    if extra:
        log.info("%s holds %d images that are not in the manifest (ignored)", path, extra)
