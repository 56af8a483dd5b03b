"""corpus (QAPE): turn VQA answers into per-(image, class) foreground/background phrases.

Input: the vqa shard tables (columns ``image_id, class_name, kind, question, answer``).
Two rule sets (``corpus.rules``):

``reference`` (default; QA-CLIMS ``net/vqa_fg.py``, ``net/vqa_bg.py`` and the answer
generator ``get_blip_vqa_results.py``): each answer is taken as BLIP wrote it (stripped)
and lemmatised as one noun (WordNet's ``lemmatize(answer)``: a one-word answer gets its
noun lemma, a longer answer is kept; answers of the authors' released files are already
lemmatised and are not touched again). Foreground: every answer counts, duplicates
included; one that contains none of the class name and its ``synonyms`` as a substring
becomes ``"<answer> <class name>"``. Background: the distinct answers, less the one equal
to the class name.

``clean`` (the project's own rules, a switch): each answer is

1. normalised: lower case, accents stripped, ``t - shirt`` -> ``t-shirt``, characters other
   than letters, digits, ``'`` and ``-`` become spaces, whitespace collapsed;
2. lemmatised (``lemmatize: head``, default: the last word only, the head of an English
   noun phrase, ``dining tables`` -> ``dining table``; ``all``; ``none``); words ending in
   ``keep_suffixes`` (``-ing``, ``-ed``: ``sitting``, ``potted``) are kept;
3. dropped when empty, shorter than ``min_phrase_len`` characters, without a letter
   (``2``, ``?``), or in ``drop_answers`` (``yes``, ``no``, ``nothing``, ...);
4. background: dropped when it is the class name or one of its ``synonyms`` (compared
   after the same normalising and lemmatising, so ``dogs`` is ``dog``);
   foreground: completed to ``"<answer> <class name>"`` when it does not contain the class
   name or a synonym as whole words (``persian`` -> ``persian cat``, ``table`` kept for
   dining table);
5. a pair whose foreground answers were all dropped gets the class name itself as its one
   phrase when ``complete_fg_with_class`` is on.

Noun lemmas come from lemminflect (its data ships in the wheel; nothing downloads), the
shortest of its noun readings (``leaves`` -> ``leaf``, as WordNet's lemmatiser picks),
``lemma_exceptions`` first (``jeans`` -> ``jean``, WordNet's). Either way phrases are
then de-duplicated per (image, class, kind), keeping first-question order, and ``count``
says how many answers gave the phrase: text_features weights a foreground phrase by it,
which is the reference's mean over all answers.

Outputs: the corpus table (:data:`CORPUS_COLUMNS`, sorted by image, class index, kind
``fg`` before ``bg``, first occurrence) and a long statistics table
(:data:`STATS_COLUMNS`, see :func:`statistics`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qaclims.artifacts.tables import ANSWER_COLUMNS, CORPUS_COLUMNS
from qaclims.core.config import setting
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_parquet, write_parquet
from qaclims.data.manifest import raise_if_any
from qaclims.qape.text_rules import (
    LEMMA_EXCEPTIONS,
    apply_class_rule,
    class_forms,
    clean_answer,
    normalise,
    reference_lemma,
)

log = logging.getLogger(__name__)

STATS_COLUMNS: tuple[str, ...] = ("section", "kind", "class_name", "phrase", "rank", "value")
KINDS: tuple[str, ...] = ("fg", "bg")
LEMMATIZE_MODES: tuple[str, ...] = ("head", "all", "none")
RULES: tuple[str, ...] = ("reference", "clean")

#: QA-CLIMS ``supply_cat``: the other names of three VOC classes (config/voc12.yaml; COCO
#: has the first two, config/coco14.yaml). The default is no synonyms.
VOC_SYNONYMS: dict[str, tuple[str, ...]] = {
    "dining table": ("table",),
    "tv monitor": ("monitor",),
    "potted plant": ("plant",),
}
DROP_ANSWERS: tuple[str, ...] = ("yes", "no", "nothing", "unknown", "none")
KEEP_SUFFIXES: tuple[str, ...] = ("ing", "ed")


@dataclass(frozen=True)
class CorpusConfig:
    """corpus settings (defaults: the reference's rules; the paper configs set QA-CLIMS
    ``supply_cat`` synonyms).

    rules: reference (QA-CLIMS) or clean (normalised, filtered; the settings below marked
        clean apply only there).
    synonyms: class name -> other names of it; removed from background phrases and
        accepted instead of the class name in foreground phrases. Every key must be a class
        of the data set (an unknown one is an error naming it).
    min_phrase_len: (clean) shortest phrase kept, in characters.
    drop_answers: (clean) answers that say nothing about the scene (after normalising).
    complete_fg_with_class: (clean) append the class name to a foreground phrase lacking
        it, and give a pair without foreground phrase the class name.
    top_k: most frequent phrases per class and kind listed in the statistics.
    lemmatize: (clean) head (last word only), all (every word) or none.
    lemma_exceptions: word -> noun lemma used instead of lemminflect's.
    keep_suffixes: (clean) words with these endings are not lemmatised.
    """

    rules: str = setting("reference", choices=RULES)
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    min_phrase_len: int = setting(1, ge=1)
    drop_answers: tuple[str, ...] = DROP_ANSWERS
    complete_fg_with_class: bool = True
    top_k: int = setting(10, ge=1)
    lemmatize: str = setting("head", choices=LEMMATIZE_MODES)
    lemma_exceptions: dict[str, str] = field(default_factory=lambda: dict(LEMMA_EXCEPTIONS))
    keep_suffixes: tuple[str, ...] = KEEP_SUFFIXES

    def __post_init__(self) -> None:
        if self.rules not in RULES:
            raise ConfigError(
                f"config key corpus.rules is {self.rules!r}; expected one of {list(RULES)}"
            )
        if self.lemmatize not in LEMMATIZE_MODES:
            raise ConfigError(
                f"config key corpus.lemmatize is {self.lemmatize!r}; "
                f"expected one of {list(LEMMATIZE_MODES)}"
            )
        if self.min_phrase_len < 1:
            raise ConfigError("config key corpus.min_phrase_len must be >= 1")
        if self.top_k < 1:
            raise ConfigError("config key corpus.top_k must be >= 1")


def check_synonyms(cfg: CorpusConfig, classes: Sequence[str]) -> None:
    """Raise :class:`ConfigError` naming every ``corpus.synonyms`` key that is not a class."""
    unknown = sorted(set(cfg.synonyms) - set(classes))
    if unknown:
        raise ConfigError(
            f"config key corpus.synonyms names {unknown}, not classes of this data set "
            f"(classes: {list(classes)})"
        )


# ----------------------------------------------------------------------------- text rules


# ----------------------------------------------------------------------------- tables


def read_answers(paths: Sequence[Path], classes: Sequence[str]) -> pd.DataFrame:
    """Concatenate answer tables; unknown kinds or classes raise naming the file."""
    frames = []
    for p in paths:
        df = read_parquet(p, columns=list(ANSWER_COLUMNS))[list(ANSWER_COLUMNS)]
        bad_kind = sorted(set(df["kind"]) - set(KINDS))
        raise_if_any(bad_kind, f"unknown kinds (expected {list(KINDS)})", f"in {p}")
        bad_cls = sorted(set(df["class_name"]) - set(classes))
        raise_if_any(bad_cls, "class names not in the data set's classes", f"in {p}")
        frames.append(df.astype({"answer": str, "image_id": str}))
    if not frames:
        return pd.DataFrame({c: pd.Series([], dtype=str) for c in ANSWER_COLUMNS})
    return pd.concat(frames, ignore_index=True)


def reference_phrase(
    answer: str, kind: str, class_name: str, cfg: CorpusConfig, lemmatised: bool
) -> tuple[str | None, str]:
    """``(phrase or None, status)`` of one answer under the reference's rules."""
    a = answer.strip() if lemmatised else reference_lemma(answer, cfg.lemma_exceptions)
    if kind == "bg":
        return (None, "class_removed") if a == class_name else (a, "kept")
    names = [class_name, *cfg.synonyms.get(class_name, ())]
    if any(n in a for n in names):
        return a, "kept"
    return f"{a} {class_name}", "completed"


def phrase_rows(answers: pd.DataFrame, cfg: CorpusConfig, lemmatised: bool = False) -> pd.DataFrame:
    """Per answer row: ``phrase`` (None when dropped) and ``status`` (kept, dropped,
    class_removed, completed). ``lemmatised``: the answers are the reference's lemmatised
    ones already (its released files); only the reference rules use it."""
    if cfg.rules == "reference":
        keys = zip(answers["answer"], answers["kind"], answers["class_name"], strict=True)
        memo: dict[tuple[str, str, str], tuple[str | None, str]] = {}
        res = []
        for key in keys:
            if key not in memo:
                memo[key] = reference_phrase(*key, cfg, lemmatised)
            res.append(memo[key])
        return answers.assign(phrase=[r[0] for r in res], status=[r[1] for r in res])
    cleaned = {a: clean_answer(a, cfg) for a in answers["answer"].unique()}
    forms = {c: class_forms(c, cfg) for c in answers["class_name"].unique()}
    out = answers.assign(phrase=answers["answer"].map(cleaned))
    done: dict[tuple[str, str, str], tuple[str | None, str]] = {}
    for p, k, c in zip(out["phrase"], out["kind"], out["class_name"], strict=True):
        if (p, k, c) in done or p is None or pd.isna(p):
            continue
        f = apply_class_rule(p, k, c, forms[c], cfg.complete_fg_with_class)
        done[(p, k, c)] = (f, "class_removed" if f is None else "completed" if f != p else "kept")
    res = [
        done.get((p, k, c), (None, "dropped"))
        for p, k, c in zip(out["phrase"], out["kind"], out["class_name"], strict=True)
    ]
    return out.assign(phrase=[r[0] for r in res], status=[r[1] for r in res])


def build_corpus(rows: pd.DataFrame, classes: Sequence[str], cfg: CorpusConfig) -> pd.DataFrame:
    """De-duplicated phrases with counts (:data:`CORPUS_COLUMNS`), plus the class-name
    fallback for foreground pairs left without a phrase, in corpus order."""
    group = ["image_id", "class_name", "kind", "phrase"]
    kept = rows[rows["phrase"].notna()]
    corpus = kept.groupby(group, sort=False).size().rename("count").reset_index()
    if cfg.complete_fg_with_class and cfg.rules == "clean":
        fg_pairs = rows.loc[rows["kind"] == "fg", ["image_id", "class_name"]].drop_duplicates()
        have = corpus.loc[corpus["kind"] == "fg", ["image_id", "class_name"]].drop_duplicates()
        lacking = fg_pairs.merge(have, how="left", indicator=True).query("_merge == 'left_only'")
        fallback = lacking[["image_id", "class_name"]].assign(
            kind="fg", phrase=lacking["class_name"].map(normalise), count=1
        )
        corpus = pd.concat([corpus, fallback], ignore_index=True)
    order = {c: i for i, c in enumerate(classes)}
    corpus = corpus.assign(
        _c=corpus["class_name"].map(order), _k=corpus["kind"].map({"fg": 0, "bg": 1})
    )
    corpus = corpus.sort_values(["image_id", "_c", "_k"], kind="stable")
    out = corpus[list(CORPUS_COLUMNS)].reset_index(drop=True)
    return out.astype({c: str for c in CORPUS_COLUMNS[:4]} | {"count": "int64"})


def _stat(
    section: str, kind: str, cls: str, value: float, phrase: str = "", rank: int = 0
) -> dict[str, object]:
    return {
        "section": section,
        "kind": kind,
        "class_name": cls,
        "phrase": phrase,
        "rank": rank,
        "value": float(value),
    }


def statistics(rows: pd.DataFrame, corpus: pd.DataFrame, cfg: CorpusConfig) -> pd.DataFrame:
    """Long table (:data:`STATS_COLUMNS`; ``class_name`` ``""`` = all classes).

    Sections, per kind: ``answers`` (input answers), ``dropped``, ``class_removed`` (bg
    only), ``completed`` (fg only), ``phrases_per_image`` (mean over images of the
    image's phrases, all its classes together), ``phrases_per_pair`` and
    ``distinct_phrases`` (overall and per class), ``top_phrase`` (per class, the
    ``top_k`` phrases held by most (image, class) pairs: ``rank`` 1.., ``value`` = number
    of pairs; ties in alphabetical order).
    """
    out: list[dict[str, object]] = []
    for kind in KINDS:
        r, c = rows[rows["kind"] == kind], corpus[corpus["kind"] == kind]
        out.append(_stat("answers", kind, "", len(r)))
        for st in ("dropped", "class_removed" if kind == "bg" else "completed"):
            out.append(_stat(st, kind, "", int((r["status"] == st).sum())))
        if len(c):
            out.append(_stat("phrases_per_image", kind, "", c.groupby("image_id").size().mean()))
        out += _class_stats(c, kind, "", cfg.top_k, with_top=False)
        for cls, cc in c.groupby("class_name", sort=True):
            out += _class_stats(cc, kind, str(cls), cfg.top_k, with_top=True)
    return pd.DataFrame(out, columns=list(STATS_COLUMNS)).astype({"rank": "int64"})


def _class_stats(
    c: pd.DataFrame, kind: str, cls: str, top_k: int, with_top: bool
) -> list[dict[str, object]]:
    if not len(c):
        return []
    pairs = c.groupby(["image_id", "class_name"]).size()
    out = [
        _stat("phrases_per_pair", kind, cls, pairs.mean()),
        _stat("distinct_phrases", kind, cls, c["phrase"].nunique()),
    ]
    if with_top:
        top = c.groupby("phrase").size().sort_values(ascending=False, kind="stable")
        top = top.iloc[:top_k]
        out += [
            _stat("top_phrase", kind, cls, n, str(p), i + 1) for i, (p, n) in enumerate(top.items())
        ]
    return out


def run(
    answer_tables: list[Path],
    classes: list[str],
    cfg: CorpusConfig,
    out_corpus: Path,
    out_stats: Path,
    lemmatised: bool = False,
) -> None:
    """Build the phrase corpus from vqa answer tables (both kinds, all shards).

    ``lemmatised``: the answers are already the reference's lemmatised ones (imported from
    the authors' files), so the reference rules do not lemmatise them again.

    Writes ``out_corpus`` (Parquet, :data:`CORPUS_COLUMNS`) and ``out_stats`` (Parquet,
    :data:`STATS_COLUMNS`). Missing files, unknown kinds or class names raise
    :class:`DataError` naming the file; synonyms of a class not in ``classes`` raise
    :class:`ConfigError` naming it.
    """
    check_synonyms(cfg, classes)
    if not answer_tables:
        raise DataError("corpus: no answer tables given")
    rows = phrase_rows(read_answers(answer_tables, classes), cfg, lemmatised)
    corpus = build_corpus(rows, classes, cfg)
    write_parquet(out_corpus, corpus)
    write_parquet(out_stats, statistics(rows, corpus, cfg))
    log.info(
        "corpus: %d answers -> %d phrases (%d fg, %d bg) for %d images -> %s",
        len(rows),
        len(corpus),
        int((corpus["kind"] == "fg").sum()),
        int((corpus["kind"] == "bg").sum()),
        corpus["image_id"].nunique(),
        out_corpus,
    )
