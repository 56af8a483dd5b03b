"""The synthetic world's text: VQA answers for every (image, object, question) and the
region captions the tiny CLIP trains on, drawn from the scene facts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from qaclims.data.synthetic import SyntheticConfig

from qaclims.data.synthetic_world import (
    BG_RELATIONS,
    DEFAULT_QUESTIONS,
    FG_RELATIONS,
    UNINFORMATIVE,
    BackgroundKind,
    ObjectKind,
)


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def plural_of(phrase: str) -> str:
    """English plural of a phrase's last word ("beach ball" -> "beach balls", "box" -> "boxes")."""
    if phrase.endswith(("s", "x", "ch", "sh")):
        return phrase + "es"
    if phrase.endswith("y") and phrase[-2:-1] not in "aeiou":
        return phrase[:-1] + "ies"
    return phrase + "s"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def fg_answer(rng: np.random.Generator, kind: ObjectKind, relation: str,
              cfg: SyntheticConfig) -> str:  # fmt: skip
    """A VQA answer to a foreground question (``relation`` kind or name) about ``kind``."""
    if rng.random() < cfg.answer_noise:
        return _pick(rng, UNINFORMATIVE)
    if rng.random() < cfg.p_class_name:
        word = kind.name
    elif relation == "kind":
        word = _pick(rng, (*kind.subtypes, f"{kind.colour_name} {kind.name}"))
    else:
        word = _pick(rng, kind.synonyms)
    return plural_of(word) if rng.random() < cfg.p_plural else word


@dataclass(frozen=True)
class SceneObject:
    """A drawn object with what the answers and captions need to know about it."""

    kind: ObjectKind
    bbox: tuple[int, int, int, int]
    area_fraction: float

    @property
    def centre_x(self) -> float:
        return (self.bbox[0] + self.bbox[2]) / 2


def bg_answer(rng: np.random.Generator, obj: SceneObject, others: Sequence[SceneObject],
              bg: BackgroundKind, relation: str, cfg: SyntheticConfig) -> str:  # fmt: skip
    """A VQA answer to a background question about ``obj`` in its scene.

    above/under: what lies above/below in that background; behind/around: the background;
    next: a neighbour object if there is one; left/right: a neighbour whose visible centre
    is on that side, else the background; scene/environment/place: the kind of place.
    """
    if rng.random() < cfg.answer_noise:
        return _pick(rng, UNINFORMATIVE)
    side = {
        "next": list(others),
        "left": [o for o in others if o.centre_x < obj.centre_x],
        "right": [o for o in others if o.centre_x > obj.centre_x],
    }.get(relation, [])
    if side:
        return _pick(rng, (side[0].kind.name, side[0].kind.synonyms[0]))
    table = {"above": bg.above, "under": bg.under, "scene": bg.places, "place": bg.places,
             "environment": (*bg.places, *bg.synonyms)}  # fmt: skip
    return _pick(rng, table.get(relation, bg.synonyms))


def answers_for(rng: np.random.Generator, image_id: str, objs: Sequence[SceneObject],
                bg: BackgroundKind, cfg: SyntheticConfig) -> list[dict[str, str]]:  # fmt: skip
    """Answer rows (image_id, class_name, kind, question, answer) for every present class."""
    rows = []
    for obj in objs:
        others = [o for o in objs if o is not obj]
        for q, rel in zip(DEFAULT_QUESTIONS["fg"], FG_RELATIONS, strict=True):
            ans = fg_answer(rng, obj.kind, rel, cfg)
            rows.append(_answer_row(image_id, obj.kind.name, "fg", q, ans))
        for q, rel in zip(DEFAULT_QUESTIONS["bg"], BG_RELATIONS, strict=True):
            ans = bg_answer(rng, obj, others, bg, rel, cfg)
            rows.append(_answer_row(image_id, obj.kind.name, "bg", q, ans))
    return rows


def _answer_row(image_id: str, name: str, kind: str, q: str, a: str) -> dict[str, str]:
    return {"image_id": image_id, "class_name": name, "kind": kind, "question": q.format(name),
            "answer": a}  # fmt: skip


def captions_for(rng: np.random.Generator, image_id: str, objs: Sequence[SceneObject],
                 bg: BackgroundKind, n: int,
                 plural: bool = False) -> list[dict[str, str]]:  # fmt: skip
    """Caption rows (image_id, region, caption): ``n`` distinct ones per region.

    Regions: ``image`` (objects and background), ``fg:<class>`` (the object alone, no
    background words) and ``bg`` (the background alone, no object words). An object's ``n``
    captions name it in the singular ("a bouncy ball"); with ``plural`` one more names it in
    the plural ("bouncy balls"), as foreground answers may (``fg_answer``), an extra caption
    so that the singular names are seen as often as without it.
    """
    things = [[f"{o.kind.colour_name} {o.kind.name}", o.kind.name, o.kind.synonyms[0]]
              for o in objs]  # fmt: skip
    if len(objs) == 1:
        whole = [f"{_a(t)} {p}" for t in things[0] for p in bg.in_phrases]
    else:
        pairs = list(zip(*things, strict=True))
        whole = [f"{_a(a)} and {_a(b)} {p}" for a, b in pairs for p in bg.in_phrases]
        whole.append(f"{_a(things[0][1])} next to {_a(things[1][1])}")
    # every word a VQA answer may use is in some caption: all the names of the background,
    # its places and what is above and under it; all the names of each object (and with
    # ``plural`` their plurals, which the reference's answer rules keep in "bouncy balls")
    bg_words = (*bg.synonyms, *bg.places, *bg.above, *bg.under)
    draws = [("image", whole, n), ("bg", [*bg.alone, *map(_a, bg_words)], n)]
    for o, t in zip(objs, things, strict=True):
        names = [*t, *o.kind.synonyms, *o.kind.subtypes]
        draws.append((f"fg:{o.kind.name}", [*map(_a, names)], n))
        if plural:
            draws.append((f"fg:{o.kind.name}", [*map(plural_of, names)], 1))
    rows = []
    for region, candidates, k in draws:
        options = list(dict.fromkeys(candidates))  # distinct, in order
        for i in rng.permutation(len(options))[:k]:
            rows.append({"image_id": image_id, "region": region, "caption": options[int(i)]})
    return rows
