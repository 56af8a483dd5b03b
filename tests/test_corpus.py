"""corpus: normalising, lemmatising, synonym removal, fg completion, de-duplication, stats."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from qaclims.core.config import from_mapping
from qaclims.core.errors import DataError
from qaclims.qape import corpus, text_rules

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


#: the clean rules with QA-CLIMS supply_cat plus "tv" for tv monitor
CLEAN: dict[str, object] = {
    "rules": "clean",
    "synonyms": {
        "dining table": ["table"],
        "tv monitor": ["monitor", "tv"],
        "potted plant": ["plant"],
    },
}


def run_default(tmp_path: Path, **cfg: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    c = from_mapping(corpus.CorpusConfig, CLEAN | cfg, "corpus")
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
    assert text_rules.normalise(text) == want


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
    cfg = corpus.CorpusConfig(rules="clean", lemmatize=mode)
    assert text_rules.lemmatise(text, cfg) == want


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


# ----------------------------------------------------------------------- the reference rules

SUPPLY_CAT = {"dining table": ["table"], "tv monitor": ["monitor"], "potted plant": ["plant"]}
REF_ANSWERS: list[tuple[str, str, str, list[str]]] = [
    ("a", "dog", "fg", ["husky", "husky", "dogs", "german shepherd", "yes", "hot dog"]),
    ("a", "dog", "bg", ["grass", "grasses", "dog", "dogs", "white clouds", "sky"]),
    ("a", "dining table", "fg", ["wooden", "tables", "dining tables", "cat"]),
    ("a", "dining table", "bg", ["table", "chairs", "dining table"]),
    ("b", "tv monitor", "fg", ["tv", "monitors", "screen"]),
    ("b", "tv monitor", "bg", ["tvs", "wall"]),
    ("c", "potted plant", "fg", ["plants", "potted plant"]),
    ("c", "potted plant", "bg", ["potted plant", "windows"]),
]
# by hand from QA-CLIMS: lemmatize(answer) as one noun (one word: its lemma; several: kept);
# fg: "<answer> <label>" unless the label or a supply_cat name is a substring, duplicates
# counted; bg: distinct answers less the one equal to the label
REF_EXPECTED = [
    ("a", "dog", "fg", "husky dog", 2),
    ("a", "dog", "fg", "dog", 1),
    ("a", "dog", "fg", "german shepherd dog", 1),
    ("a", "dog", "fg", "yes dog", 1),
    ("a", "dog", "fg", "hot dog", 1),
    ("a", "dog", "bg", "grass", 2),
    ("a", "dog", "bg", "white clouds", 1),
    ("a", "dog", "bg", "sky", 1),
    ("a", "dining table", "fg", "wooden dining table", 1),
    ("a", "dining table", "fg", "table", 1),
    ("a", "dining table", "fg", "dining tables", 1),
    ("a", "dining table", "fg", "cat dining table", 1),
    ("a", "dining table", "bg", "table", 1),
    ("a", "dining table", "bg", "chair", 1),
    ("b", "tv monitor", "fg", "tv tv monitor", 1),
    ("b", "tv monitor", "fg", "monitor", 1),
    ("b", "tv monitor", "fg", "screen tv monitor", 1),
    ("b", "tv monitor", "bg", "tv", 1),
    ("b", "tv monitor", "bg", "wall", 1),
    ("c", "potted plant", "fg", "plant", 1),
    ("c", "potted plant", "fg", "potted plant", 1),
    ("c", "potted plant", "bg", "window", 1),
]


def _ref_run(tmp_path: Path, lemmatised: bool = False) -> pd.DataFrame:
    rows = [(i, c, k, f"q{j}", a) for i, c, k, ans in REF_ANSWERS for j, a in enumerate(ans)]
    path = tmp_path / "answers.parquet"
    pd.DataFrame(rows, columns=list(corpus.ANSWER_COLUMNS)).to_parquet(path)
    cfg = from_mapping(corpus.CorpusConfig, {"synonyms": SUPPLY_CAT}, "corpus")
    assert cfg.rules == "reference"  # the default
    out_c, out_s = tmp_path / "c.parquet", tmp_path / "s.parquet"
    corpus.run([path], CLASSES, cfg, out_c, out_s, lemmatised=lemmatised)
    return pd.read_parquet(out_c)


def test_reference_rules_on_hand_written_answers(tmp_path: Path) -> None:
    df = _ref_run(tmp_path)
    assert list(df.itertuples(index=False, name=None)) == REF_EXPECTED
    # every foreground answer counts: the counts of a pair add up to its answers
    fg = df[df.kind == "fg"].groupby(["image_id", "class_name"])["count"].sum()
    assert fg.to_dict() == {("a", "dog"): 6, ("a", "dining table"): 4, ("b", "tv monitor"): 3,
                            ("c", "potted plant"): 2}  # fmt: skip


def test_reference_rules_do_not_lemmatise_lemmatised_answers(tmp_path: Path) -> None:
    df = _ref_run(tmp_path, lemmatised=True)
    bg = df[(df.image_id == "a") & (df.class_name == "dog") & (df.kind == "bg")]
    # "grasses" and "dogs" stay as the file has them; only "dog" equals the label
    assert list(bg["phrase"]) == ["grass", "grasses", "dogs", "white clouds", "sky"]


def test_unknown_synonym_class_is_an_error(tmp_path: Path) -> None:
    from qaclims.core.errors import ConfigError

    cfg = from_mapping(corpus.CorpusConfig, {"synonyms": {"diningtable": ["table"]}}, "corpus")
    with pytest.raises(ConfigError, match=r"corpus\.synonyms names \['diningtable'\]"):
        corpus.run(write_tables(tmp_path), CLASSES, cfg, tmp_path / "c", tmp_path / "s")


#: plural forms typical of VQA answers -> WordNet 3.0's noun lemma, i.e. what
#: ``nltk.stem.WordNetLemmatizer().lemmatize(word)`` returns (morphy's exception list and
#: suffix rules over index.noun, the shortest candidate), written out by hand
WORDNET_NOUN_LEMMAS = {
    "crosses": "cross", "shelves": "shelf", "glasses": "glass", "leaves": "leaf",
    "buses": "bus", "benches": "bench", "knives": "knife", "people": "people", "mice": "mouse",
    "wolves": "wolf", "boxes": "box", "dishes": "dish", "churches": "church",
    "buildings": "building", "trees": "tree", "clouds": "cloud", "skies": "sky",
    "cities": "city", "flowers": "flower", "bushes": "bush", "houses": "house",
    "tables": "table", "chairs": "chair", "sheep": "sheep", "geese": "goose",
    "women": "woman", "men": "man", "children": "child", "teeth": "tooth", "feet": "foot",
    "stars": "star", "kites": "kite", "toys": "toy", "windows": "window",
    "curtains": "curtain", "pillows": "pillow", "sofas": "sofa", "beaches": "beach",
    "grasses": "grass", "potatoes": "potato", "tomatoes": "tomato", "photos": "photo",
    "wives": "wife", "halves": "half", "scarves": "scarf", "hooves": "hoof",
    "loaves": "loaf", "thieves": "thief", "shoes": "shoe", "clothes": "clothes",
    "jeans": "jean", "pants": "pant", "trousers": "trouser", "scissors": "scissors",
    "dresses": "dress", "watches": "watch", "foxes": "fox", "babies": "baby",
    "ladies": "lady", "puppies": "puppy", "ponies": "pony", "sidewalks": "sidewalk",
    "fences": "fence", "waves": "wave", "candles": "candle", "spoons": "spoon",
    "sandwiches": "sandwich", "umbrellas": "umbrella", "giraffes": "giraffe",
    "cattle": "cattle", "cows": "cow", "news": "news", "grass": "grass", "bus": "bus",
    "monitors": "monitor", "motorbikes": "motorbike", "bicycles": "bicycle",
}  # fmt: skip


def test_noun_lemmas_equal_wordnet_on_vqa_plurals() -> None:
    assert len(WORDNET_NOUN_LEMMAS) >= 50
    got = {w: text_rules.reference_lemma(w) for w in WORDNET_NOUN_LEMMAS}
    assert got == WORDNET_NOUN_LEMMAS
    # the whole answer is one noun: a multi-word answer is kept as it is
    assert text_rules.reference_lemma("white clouds") == "white clouds"


WORDNET_DIR = Path("/usr/share/wordnet")  # Debian/Ubuntu: apt install wordnet-base


@pytest.mark.skipif(
    not (WORDNET_DIR / "index.noun").exists(), reason="WordNet files (wordnet-base) absent"
)
def test_the_lemma_table_is_wordnets_own() -> None:
    """The hand table above against WordNet's database itself: morphy (exception list,
    then the noun suffix rules, kept when the form is in index.noun), shortest wins."""
    index = {
        line.split(" ", 1)[0]
        for line in (WORDNET_DIR / "index.noun").read_text().splitlines()
        if line and not line.startswith(" ")
    }
    exc: dict[str, list[str]] = {}
    for line in (WORDNET_DIR / "noun.exc").read_text().splitlines():
        parts = line.split()
        exc.setdefault(parts[0], []).extend(parts[1:])
    rules = [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
             ("shes", "sh"), ("men", "man"), ("ies", "y")]  # fmt: skip

    def wordnet(word: str) -> str:
        forms = [*exc.get(word, []), word]
        forms += [word[: -len(a)] + b for a, b in rules if word.endswith(a)]
        found = [f for f in dict.fromkeys(forms) if f in index]
        return min(found, key=len) if found else word

    assert {w: wordnet(w) for w in WORDNET_NOUN_LEMMAS} == WORDNET_NOUN_LEMMAS
