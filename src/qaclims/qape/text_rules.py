"""QAPE's text rules: normalising an answer, noun lemmas (lemminflect, WordNet's choices;
the reference's whole-answer lemma), dropping non-answers, and the class-name rule that
completes a foreground phrase or drops a background one (see :mod:`qaclims.qape.corpus`)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import lemminflect

if TYPE_CHECKING:
    from qaclims.qape.corpus import CorpusConfig

#: Words whose WordNet noun lemma lemminflect does not give, or that must not change.
LEMMA_EXCEPTIONS: dict[str, str] = {
    "jeans": "jean",
    "us": "us",
    "is": "is",
    "as": "as",
    "has": "has",
    "was": "was",
    "tvs": "tv",
}

_NON_WORD = re.compile(r"[^a-z0-9'\- ]+")
_JOINED = re.compile(r"\s*([-'])\s*")
_LETTER = re.compile(r"[a-z]")


def normalise(text: str) -> str:
    """Lower case, accents stripped (``café`` -> ``cafe``), ``a - b`` -> ``a-b``, other
    characters than ``a-z 0-9 ' -`` to spaces, spaces collapsed."""
    t = unicodedata.normalize("NFKD", text).lower()
    t = "".join(ch for ch in t if not unicodedata.combining(ch))
    t = _JOINED.sub(r"\1", t)
    t = _NON_WORD.sub(" ", t)
    return " ".join(w.strip("-'") for w in t.split() if w.strip("-'"))


@lru_cache(maxsize=65536)
def _lemma(word: str) -> str:
    """lemminflect's shortest noun reading of ``word`` (itself when it has none)."""
    cands = lemminflect.getLemma(word, upos="NOUN", lemmatize_oov=True)
    return min(cands, key=len) if cands else word


def noun_lemma(word: str, exceptions: dict[str, str] | None = None) -> str:
    """WordNet-style noun lemma of one lower-case word (``crosses`` -> ``cross``,
    ``shelves`` -> ``shelf``, ``people`` -> ``people``); ``exceptions`` first."""
    table = LEMMA_EXCEPTIONS if exceptions is None else exceptions
    return table[word] if word in table else _lemma(word)


def reference_lemma(answer: str, exceptions: dict[str, str] | None = None) -> str:
    """The reference's ``WordNetLemmatizer().lemmatize(answer)``: the whole answer as one
    noun, so one word gets its lemma and a multi-word answer is kept (WordNet's own
    multi-word entries aside, which only its database knows)."""
    a = answer.strip()
    return noun_lemma(a, exceptions) if a and " " not in a else a


def lemmatise(phrase: str, cfg: CorpusConfig) -> str:
    """Lemmatise a normalised phrase's words as ``cfg.lemmatize`` says."""
    words = phrase.split()
    if cfg.lemmatize == "none" or not words:
        return phrase
    first = len(words) - 1 if cfg.lemmatize == "head" else 0
    for i in range(first, len(words)):
        w = words[i]
        if w in cfg.lemma_exceptions:
            words[i] = cfg.lemma_exceptions[w]
        elif not w.endswith(cfg.keep_suffixes):
            words[i] = noun_lemma(w, cfg.lemma_exceptions)
    return " ".join(words)


def clean_answer(answer: str, cfg: CorpusConfig) -> str | None:
    """The answer as a normalised, lemmatised phrase, or None when it is to be dropped."""
    norm = normalise(answer)
    phrase = lemmatise(norm, cfg)
    drop = set(cfg.drop_answers)
    if len(phrase) < cfg.min_phrase_len or not _LETTER.search(phrase):
        return None
    if norm in drop or phrase in drop:
        return None
    return phrase


def class_forms(class_name: str, cfg: CorpusConfig) -> tuple[tuple[str, ...], ...]:
    """The class name and its synonyms as word tuples, normalised and lemmatised."""
    names = [class_name, *cfg.synonyms.get(class_name, ())]
    forms = (tuple(lemmatise(normalise(n), cfg).split()) for n in names)
    return tuple(dict.fromkeys(f for f in forms if f))


def contains_words(words: Sequence[str], part: Sequence[str]) -> bool:
    """Whether ``part`` occurs in ``words`` as a contiguous run of whole words."""
    n = len(part)
    return any(tuple(words[i : i + n]) == tuple(part) for i in range(len(words) - n + 1))


def apply_class_rule(
    phrase: str, kind: str, class_name: str, forms: tuple[tuple[str, ...], ...], complete: bool
) -> str | None:
    """Background: None if ``phrase`` is the class or a synonym. Foreground: the phrase,
    with the (normalised) class name appended when it holds no form and ``complete``."""
    words = tuple(phrase.split())
    if kind == "bg":
        return None if words in forms else phrase
    if complete and not any(contains_words(words, f) for f in forms):
        return f"{phrase} {normalise(class_name)}"
    return phrase
