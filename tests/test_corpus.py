"""corpus: normalising, lemmatising, synonym removal, fg completion, de-duplication, stats."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from qaclims import corpus
from qaclims.config import from_mapping
from qaclims.errors import DataError

CLASSES = ["dog", "dining table", "tv monitor", "potted plant"]

# (image, class, kind, answers in question order)
ANSWERS: list[tuple[str, str, str, list[str]]] = [
    ("b", "potted plant", "bg", ["potted plants", "plant", "window", "window sill", "Window"]),
    ("b", "potted plant", "fg", ["yes", "no", "", "?"]),
    ("b", "tv monitor", "bg", ["tv", "wall", "monitor", "desk", "TVs"]),
    ("b", "tv monitor", "fg", ["TV", "screen", "monitors"]),
    ("a", "dog", "fg", ["Husky", "husky", "dogs", "", "yes", "German  Shepherd"]),
    ("a", "dog", "bg", ["grass", "Grass ", "dogs", "sky", "2", "nothing", "trees"]),
    ("a", "dining table", "bg", ["table", "tables", "Chairs", "dining table", "floor"]),
    ("a", "dining table", "fg", ["wooden", "table", "Dining Tables", "round table"]),
    ("c", "dog", "bg", ["grass", "road", "grass"]),
    ("c", "dog", "fg", ["puppy"]),
]

# worked out by hand from the rules in the module docstring
EXPECTED = [
    ("a", "dog", "fg", "husky dog", 2),
    ("a", "dog", "fg", "dog", 1),
    ("a", "dog", "fg", "german shepherd dog", 1),
    ("a", "dog", "bg", "grass", 2),
    ("a", "dog", "bg", "sky", 1),
    ("a", "dog", "bg", "tree", 1),
    ("a", "dining table", "fg", "wooden dining table", 1),
    ("a", "dining table", "fg", "table", 1),
    ("a", "dining table", "fg", "dining table", 1),
    ("a", "dining table", "fg", "round table", 1),
    ("a", "dining table", "bg", "chair", 1),
    ("a", "dining table", "bg", "floor", 1),
    ("b", "tv monitor", "fg", "tv", 1),
    ("b", "tv monitor", "fg", "screen tv monitor", 1),
    ("b", "tv monitor", "fg", "monitor", 1),
    ("b", "tv monitor", "bg", "wall", 1),
    ("b", "tv monitor", "bg", "desk", 1),
    ("b", "potted plant", "fg", "potted plant", 1),  # all dropped: the class name
    ("b", "potted plant", "bg", "window", 2),
    ("b", "potted plant", "bg", "window sill", 1),
    ("c", "dog", "fg", "puppy dog", 1),
    ("c", "dog", "bg", "grass", 2),
    ("c", "dog", "bg", "road", 1),
]


def write_tables(root: Path) -> list[Path]:
    """The answers split over two shard tables, in the vqa output layout."""
    rows = [
        (i, c, k, f"q{j} {{}}".format(c), a)
        for i, c, k, answers in ANSWERS
        for j, a in enumerate(answers)
    ]
    df = pd.DataFrame(rows, columns=list(corpus.ANSWER_COLUMNS))
    paths = [root / "s0.parquet", root / "s1.parquet"]
    df.iloc[:20].to_parquet(paths[0])
    df.iloc[20:].to_parquet(paths[1])
    return paths


def run_default(tmp_path: Path, **cfg: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    c = from_mapping(corpus.CorpusConfig, cfg, "corpus")
    out_c, out_s = tmp_path / "corpus.parquet", tmp_path / "stats.parquet"
    corpus.run(write_tables(tmp_path), CLASSES, c, out_c, out_s)
    return pd.read_parquet(out_c), pd.read_parquet(out_s)


def test_corpus_rules_on_hand_written_answers(tmp_path: Path) -> None:
    df, _ = run_default(tmp_path)
    assert list(df.columns) == list(corpus.CORPUS_COLUMNS)
    assert list(df.itertuples(index=False, name=None)) == EXPECTED


def test_statistics_match_hand_counts(tmp_path: Path) -> None:
    _, st = run_default(tmp_path, top_k=2)
    assert list(st.columns) == list(corpus.STATS_COLUMNS)

    def value(section: str, kind: str, cls: str = "") -> float:
        sel = st[(st["section"] == section) & (st["kind"] == kind) & (st["class_name"] == cls)]
        assert len(sel) == 1, (section, kind, cls)
        return float(sel["value"].iloc[0])

    assert value("answers", "fg") == 4 + 3 + 6 + 4 + 1
    assert value("answers", "bg") == 5 + 5 + 7 + 5 + 3
    assert value("dropped", "fg") == 4 + 2  # "yes" "no" "" "?"; "" "yes"
    assert value("dropped", "bg") == 2  # "2", "nothing"
    assert value("class_removed", "bg") == 2 + 3 + 1 + 3  # plant; tv x2 monitor; dog; table
    assert value("completed", "fg") == 1 + 3 + 1 + 1  # screen; husky x2 shepherd; wooden; puppy
    assert value("phrases_per_image", "bg") == pytest.approx((5 + 4 + 2) / 3)
    assert value("phrases_per_image", "fg") == pytest.approx((7 + 4 + 1) / 3)
    assert value("phrases_per_pair", "bg", "dog") == pytest.approx((3 + 2) / 2)
    assert value("distinct_phrases", "bg", "dog") == 4
    top = st[(st["section"] == "top_phrase") & (st["kind"] == "bg") & (st["class_name"] == "dog")]
    # grass in 2 pairs; then ties (1 pair each) alphabetically: road before sky, tree
    assert list(zip(top["rank"], top["phrase"], top["value"], strict=True)) == [
        (1, "grass", 2.0),
        (2, "road", 1.0),
    ]


def test_without_completion_and_custom_synonyms(tmp_path: Path) -> None:
    df, _ = run_default(tmp_path, complete_fg_with_class=False, synonyms={"dog": ["puppy"]})
    fg_c = df[(df["image_id"] == "c") & (df["kind"] == "fg")]
    assert list(fg_c["phrase"]) == ["puppy"]
    assert not (
        (df["image_id"] == "b") & (df["class_name"] == "potted plant") & (df["kind"] == "fg")
    ).any()
    # without the dining table synonyms, "table" is background of a dining table
    bg_t = df[(df["class_name"] == "dining table") & (df["kind"] == "bg")]
    assert list(bg_t["phrase"]) == ["table", "chair", "floor"]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("  A  GRASSY  Field ", "a grassy field"),
        ("t - shirt", "t-shirt"),
        ("man ' s hat", "man's hat"),
        ("Café!", "cafe"),
        ("- ?", ""),
    ],
)
def test_normalise(text: str, want: str) -> None:
    assert corpus.normalise(text) == want


@pytest.mark.parametrize(
    ("mode", "text", "want"),
    [
        ("head", "dining tables", "dining table"),
        ("head", "boxes cars", "boxes car"),
        ("all", "boxes cars", "box car"),
        ("all", "potted plants", "potted plant"),
        ("head", "skies", "sky"),
        ("none", "dogs", "dogs"),
    ],
)
def test_lemmatise_modes(mode: str, text: str, want: str) -> None:
    cfg = corpus.CorpusConfig(lemmatize=mode)
    assert corpus.lemmatise(text, cfg) == want


def test_bad_tables_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    pd.DataFrame([("a", "cat", "fg", "q", "x")], columns=list(corpus.ANSWER_COLUMNS)).to_parquet(
        bad
    )
    with pytest.raises(DataError, match=r"1 class names not in .*bad\.parquet: cat"):
        corpus.run([bad], CLASSES, corpus.CorpusConfig(), tmp_path / "c", tmp_path / "s")
    pd.DataFrame([("a", "dog", "mid", "q", "x")], columns=list(corpus.ANSWER_COLUMNS)).to_parquet(
        bad
    )
    with pytest.raises(DataError, match=r"unknown kinds .*bad\.parquet: mid"):
        corpus.run([bad], CLASSES, corpus.CorpusConfig(), tmp_path / "c", tmp_path / "s")
    with pytest.raises(DataError, match="missing table"):
        corpus.run(
            [tmp_path / "none.parquet"],
            CLASSES,
            corpus.CorpusConfig(),
            tmp_path / "c",
            tmp_path / "s",
        )
    assert not (tmp_path / "c").exists()
