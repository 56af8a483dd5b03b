"""vqa (QAPE): ask a VQA model about every (image, present class) pair of one shard.

For each manifest row of the shard and each of its foreground classes, every question
template of one kind (``fg`` or ``bg``) is filled with the class name
(``"What kind of {} is in the photo?"``) and answered. The shard's answers are written as
one Parquet table with the string columns :data:`ANSWER_COLUMNS`
(``image_id, class_name, kind, question, answer``; ``question`` is the filled-in text),
rows in manifest order, then class index order, then question order.

Backends (``vqa.backend``):

* ``blip``: transformers ``BlipForQuestionAnswering`` + ``BlipProcessor`` from a hub name
  or a local folder. Images are resized to ``image_size`` (the paper: 480 px, the position
  embeddings interpolated when the checkpoint was converted at another size). Many
  questions, over several (image, class) pairs, go through one forward: the vision encoder
  runs once per distinct image of the batch, the questions are padded, and the decoder's
  cross-attention is masked to each question's own tokens, so a batched answer equals the
  answer to the question asked alone (transformers 5.24's BLIP decoder ignores that mask;
  :func:`mask_cross_attention` fixes it, checked at load by :func:`padding_is_masked`;
  should the fix not take, each batch is decoded in groups of equal question length).
  Decoding is deterministic (beam search with ``num_beams`` beams; 1 = greedy). Answers
  are cached per (image, class, question, model key) under ``cache_dir``; a rerun asks
  only what is not cached there. The model key (:func:`model_key`) holds the checkpoint,
  image size, decoding settings and dtype: changing any of them asks again.
* ``precomputed``: imports answers: the QA-CLIMS authors' released ``*_vqa_{fg,bg}_blip.npy``
  (format ``qaclims_npy``, read through :mod:`qaclims.qape.safe_load`) or an answers table
  (format ``table``, e.g. the synthetic data set's ``answers.parquet``).

Cache layout: every ``cache_dir/<kind>-shard*/*.parquet`` is read (columns
:data:`CACHE_COLUMNS`), whatever sharding wrote it; a job writes only below its own folder
``cache_dir/<kind>-shard<k>of<n>/``: a new part file every ``cache_flush_batches``
batches (so a crash loses little), merged into ``answers.parquet`` at the end. No two
jobs of one sharding write the same file, and every write is atomic.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from qaclims.artifacts.tables import ANSWER_COLUMNS, CACHE_COLUMNS
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError
from qaclims.core.io import read_image, write_parquet
from qaclims.data.manifest import raise_if_any, read_manifest, shard_rows
from qaclims.qape.blip import BlipAnswerer, model_key, model_source, resolve_dtype
from qaclims.qape.precomputed import precomputed_answers, precomputed_path
from qaclims.qape.vqa_config import KEY, KINDS, LOG_EVERY_BATCHES, VqaConfig

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- inputs


def templates_for(cfg: VqaConfig, kind: str) -> tuple[str, ...]:
    """The question templates of ``kind`` (``fg`` | ``bg``); raises if unknown or empty."""
    if kind not in KINDS:
        raise ValueError(f"vqa kind must be one of {KINDS}, got {kind!r}")
    templates: tuple[str, ...] = getattr(cfg.questions, kind)
    if not templates:
        raise ConfigError(f"config key vqa.questions.{kind} is empty")
    return templates


def read_labelled_manifest(manifest: Path, classes: Sequence[str]) -> pd.DataFrame:
    """The manifest sorted by ``image_id``; labels outside ``0..C-1`` raise naming it."""
    df = read_manifest(manifest).sort_values("image_id", kind="stable").reset_index(drop=True)
    bad = [
        f"{i} {labels}"
        for i, labels in zip(df["image_id"], df["labels"], strict=True)
        if any(not 0 <= c < len(classes) for c in labels)
    ]
    raise_if_any(bad, f"images with labels outside 0..{len(classes) - 1}", f"in {manifest}")
    return df


def question_items(
    rows: pd.DataFrame, classes: Sequence[str], templates: Sequence[str]
) -> pd.DataFrame:
    """One row per (image, present class, question): image_id, image_path, class_name,
    question (filled in), in manifest, class and question order."""
    recs = [
        (image_id, path, classes[c], t.format(classes[c]))
        for image_id, path, labels in zip(
            rows["image_id"], rows["image_path"], rows["labels"], strict=True
        )
        for c in labels
        for t in templates
    ]
    return pd.DataFrame(recs, columns=["image_id", "image_path", "class_name", "question"])


# ----------------------------------------------------------------------------- cache


def read_cache(cache_dir: Path, kind: str, key: str) -> pd.DataFrame:
    """Every cached ``kind`` answer under ``cache_dir`` (all shardings) for model key
    ``key`` (columns image_id, class_name, question, answer; duplicates dropped)."""
    frames = []
    for f in sorted(cache_dir.glob(f"{kind}-shard*/[!.]*.parquet")):  # not temporary files
        try:
            df = pd.read_parquet(f, columns=list(CACHE_COLUMNS), filters=[("model", "==", key)])
        except FileNotFoundError:  # merged away by a concurrent job
            continue
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable cache file %s: %s", f, e)
            continue
        frames.append(df.drop(columns="model"))
    if not frames:
        return pd.DataFrame({c: pd.Series([], dtype=str) for c in [*KEY, "answer"]})
    return pd.concat(frames, ignore_index=True).drop_duplicates(KEY, keep="last")


def _own_cache_dir(cache_dir: Path, kind: str, shard: int, num_shards: int) -> Path:
    return cache_dir / f"{kind}-shard{shard}of{num_shards}"


def _write_part(own: Path, rows: list[tuple[str, str, str, str]], key: str) -> None:
    """Append answers to the cache as a new part file (atomic)."""
    if rows:
        df = pd.DataFrame(rows, columns=[*KEY, "answer"]).assign(model=key)
        write_parquet(own / f"part-{uuid.uuid4().hex}.parquet", df[list(CACHE_COLUMNS)])


def _merge_parts(own: Path) -> None:
    """Merge this job's part files into ``answers.parquet``, then remove the parts."""
    parts = sorted(own.glob("part-*.parquet"))
    if not parts:
        return
    files = ([own / "answers.parquet"] if (own / "answers.parquet").is_file() else []) + parts
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    write_parquet(own / "answers.parquet", df.drop_duplicates([*KEY, "model"], keep="last"))
    for f in parts:
        f.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- asking


def _batches(todo: pd.DataFrame, batch_size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(todo), batch_size):
        yield todo.iloc[start : start + batch_size]


def _load_images(batch: pd.DataFrame) -> tuple[list[np.ndarray], list[int]]:
    """The batch's distinct images (``HxWx3 uint8``) and each row's index into them."""
    paths = list(dict.fromkeys(batch["image_path"]))
    where = {p: i for i, p in enumerate(paths)}
    return [read_image(p) for p in paths], [where[p] for p in batch["image_path"]]


def _prefetched(
    batches: list[pd.DataFrame],
) -> Iterator[tuple[pd.DataFrame, list[np.ndarray], list[int]]]:
    """Each batch with its images, the next batch's images read in a background thread."""
    with ThreadPoolExecutor(1) as pool:
        nxt: Future[tuple[list[np.ndarray], list[int]]] = pool.submit(_load_images, batches[0])
        for b, batch in enumerate(batches):
            images, index = nxt.result()
            if b + 1 < len(batches):
                nxt = pool.submit(_load_images, batches[b + 1])
            yield batch, images, index


def ask(
    answerer: BlipAnswerer, todo: pd.DataFrame, batch_size: int, flush: int, own: Path, key: str
) -> list[str]:
    """Answer every row of ``todo`` (image_path, image_id, class_name, question) in
    batches of ``batch_size``; new answers go to the cache folder ``own`` every ``flush``
    batches and at the end. Returns the answers in row order."""
    answers: list[str] = []
    pending: list[tuple[str, str, str, str]] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="vqa", unit="q")
    for b, (batch, images, index) in enumerate(_prefetched(list(_batches(todo, batch_size)))):
        got = answerer.answer(images, index, list(batch["question"]))
        answers += got
        pending += list(zip(*(batch[k] for k in KEY), got, strict=True))
        bar.update(len(batch))
        if (b + 1) % flush == 0:
            _write_part(own, pending, key)
            pending = []
        if (b + 1) % LOG_EVERY_BATCHES == 0:
            rate = len(answers) / (time.perf_counter() - t0)
            log.info("%d/%d questions, %.1f answers/s", len(answers), len(todo), rate)
    bar.close()
    _write_part(own, pending, key)
    return answers


_LOADED: dict[tuple[str, ...], BlipAnswerer] = {}


def _loaded(cfg: VqaConfig, device: str) -> BlipAnswerer:
    """The BLIP of ``cfg`` on ``device``, loaded once per process (a vqa job answers both
    kinds of questions with it); a local folder whose files changed since is loaded again."""
    src = Path(model_source(cfg.model))
    stamps = (
        [f"{f.name}:{f.stat().st_mtime_ns}" for f in sorted(src.glob("*"))] if src.is_dir() else []
    )
    key = (str(src), cfg.dtype, device, *stamps)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = BlipAnswerer.load(cfg, device)
    ans = _LOADED[key]
    return dataclasses.replace(ans, image_size=cfg.image_size, num_beams=cfg.num_beams,
                               max_new_tokens=cfg.max_new_tokens)  # fmt: skip


def blip_answers(
    cfg: VqaConfig, items: pd.DataFrame, kind: str, device: str, cache_dir: Path, own: Path
) -> pd.Series:
    """Answers of ``items`` from the cache, asking the model only for the rest."""
    dev = torch_device(device)
    key = model_key(cfg, resolve_dtype(cfg.dtype, dev))
    cached = read_cache(cache_dir, kind, key)
    merged = items.merge(cached, on=KEY, how="left", validate="many_to_one")
    todo = merged[merged["answer"].isna()]
    log.info(
        "%d questions: %d cached, %d to ask (model key %s)",
        len(items),
        len(items) - len(todo),
        len(todo),
        key,
    )
    if len(todo):
        answerer = _loaded(cfg, dev)
        got = ask(answerer, todo, cfg.batch_size, cfg.cache_flush_batches, own, key)
        merged.loc[todo.index, "answer"] = got
    _merge_parts(own)
    return pd.Series(list(merged["answer"]), index=items.index, dtype=object)


# ----------------------------------------------------------------------------- entry


def answers_frame(items: pd.DataFrame, answers: pd.Series, kind: str) -> pd.DataFrame:
    """The shard table: :data:`ANSWER_COLUMNS`, all strings."""
    df = pd.DataFrame(
        {
            "image_id": items["image_id"],
            "class_name": items["class_name"],
            "kind": kind,
            "question": items["question"],
            "answer": answers,
        },
        columns=list(ANSWER_COLUMNS),
    )
    return df.astype(str).reset_index(drop=True)


def run(
    manifest: Path,
    classes: list[str],
    cfg: VqaConfig,
    kind: str,
    out: Path,
    shard: int,
    num_shards: int,
    device: str,
    cache_dir: Path,
) -> None:
    """Answer the ``kind`` questions for shard ``shard`` of ``num_shards`` of ``manifest``.

    ``classes``: foreground class names (label ``c`` -> ``classes[c]``). Writes ``out``
    (Parquet, :data:`ANSWER_COLUMNS`). ``device``: ``auto | cpu | cuda``. ``cache_dir``:
    answer cache of the ``blip`` backend, outside the rule outputs. Config, model folder
    and answer-file problems raise before the model is loaded.
    """
    templates = templates_for(cfg, kind)
    if cfg.backend == "blip":
        model_source(cfg.model)
        torch_device(device)
    else:
        precomputed_path(cfg, kind)
    df = read_labelled_manifest(Path(manifest), classes)
    items = question_items(shard_rows(df, shard, num_shards), classes, templates)
    if cfg.backend == "precomputed":
        all_items = question_items(df, classes, templates)
        every = precomputed_answers(cfg, kind, all_items, templates)
        lookup = dict(zip(all_items[KEY].itertuples(index=False, name=None), every, strict=True))
        keys = items[KEY].itertuples(index=False, name=None)
        answers = pd.Series([lookup[k] for k in keys], index=items.index, dtype=object)
    else:
        own = _own_cache_dir(Path(cache_dir), kind, shard, num_shards)
        answers = blip_answers(cfg, items, kind, device, Path(cache_dir), own)
    write_parquet(out, answers_frame(items, answers, kind))
    log.info(
        "vqa %s shard %d/%d: %d answers for %d images -> %s",
        kind,
        shard,
        num_shards,
        len(items),
        items["image_id"].nunique(),
        out,
    )
