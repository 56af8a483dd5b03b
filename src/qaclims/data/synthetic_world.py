"""The synthetic world's vocabulary: its object and background kinds, what a VQA model
would say about them, and what each of the paper's questions asks about."""

from __future__ import annotations

from dataclasses import dataclass

from qaclims.core.questions import BG_QUESTIONS, FG_QUESTIONS

# The questions QA-CLIMS asks BLIP for every (image, present class); the vqa stage shares them.
DEFAULT_QUESTIONS: dict[str, tuple[str, ...]] = {"fg": FG_QUESTIONS, "bg": BG_QUESTIONS}
# What each default question asks about (same order as DEFAULT_QUESTIONS).
FG_RELATIONS = ("kind", "kind", "name", "name", "name", "name")
BG_RELATIONS = (
    "above", "under", "behind", "around", "next", "left", "right", "scene", "environment",
    "place",
)  # fmt: skip
UNINFORMATIVE = ("nothing", "yes", "no", "unknown", "")


@dataclass(frozen=True)
class ObjectKind:
    """One object class of the world: its look, its context and the words for it."""

    name: str
    shape: str
    colour: tuple[int, int, int]
    colour_name: str
    context: str
    synonyms: tuple[str, ...]
    subtypes: tuple[str, ...]


@dataclass(frozen=True)
class BackgroundKind:
    """One background of the world and what a VQA model would say about it."""

    name: str
    synonyms: tuple[str, ...]
    places: tuple[str, ...]
    above: tuple[str, ...]
    under: tuple[str, ...]
    in_phrases: tuple[str, ...]
    alone: tuple[str, ...]


OBJECTS: dict[str, ObjectKind] = {
    o.name: o
    for o in (
        ObjectKind("ball", "disc", (210, 35, 40), "red", "grass",
                   ("sphere", "orb", "globe"), ("football", "bouncy ball", "soccer ball")),
        ObjectKind("box", "square", (120, 60, 175), "purple", "brick wall",
                   ("crate", "carton", "cube"), ("cardboard box", "gift box", "wooden crate")),
        ObjectKind("kite", "diamond", (245, 200, 30), "yellow", "sky",
                   ("glider", "flyer"), ("diamond kite", "stunt kite", "paper kite")),
        ObjectKind("ring", "annulus", (250, 120, 20), "orange", "water",
                   ("hoop", "lifebuoy", "loop"), ("life ring", "swim ring", "rubber ring")),
        ObjectKind("star", "star", (235, 90, 170), "pink", "sand",
                   ("starfish", "pentagram"), ("shooting star", "five-pointed star", "starfish")),
        ObjectKind("cross", "cross", (245, 245, 245), "white", "road",
                   ("plus sign", "plus", "cross mark"),
                   ("greek cross", "swiss cross", "first aid cross")),
    )
}  # fmt: skip
BACKGROUNDS: dict[str, BackgroundKind] = {
    b.name: b
    for b in (
        BackgroundKind("grass", ("grass", "lawn", "meadow", "field"),
                       ("park", "field", "garden", "meadow"), ("sky", "cloud", "tree"),
                       ("grass", "ground", "dirt"),
                       ("on green grass", "on the lawn", "in a grassy field"),
                       ("green grass", "a lawn", "a grassy field")),
        BackgroundKind("sky", ("sky", "cloud", "blue sky", "air"),
                       ("sky", "air", "outdoors"), ("sky", "cloud", "sun"),
                       ("cloud", "sky", "air"),
                       ("in the blue sky", "against the sky", "in the sky"),
                       ("a blue sky", "the sky with clouds", "white clouds")),
        BackgroundKind("water", ("water", "sea", "lake", "ocean"),
                       ("ocean", "lake", "sea", "river"), ("sky", "cloud"),
                       ("water", "wave", "sea"),
                       ("on the water", "floating on the sea", "on a blue lake"),
                       ("blue water", "the sea", "waves on a lake")),
        BackgroundKind("sand", ("sand", "beach", "dune", "desert"),
                       ("beach", "desert", "seashore"), ("sky", "sand"),
                       ("sand", "ground", "beach"),
                       ("on the sand", "on a sandy beach", "in the desert"),
                       ("yellow sand", "a sandy beach", "desert sand")),
        BackgroundKind("brick wall", ("brick wall", "wall", "bricks", "brickwork"),
                       ("building", "city", "alley"), ("wall", "bricks", "roof"),
                       ("ground", "floor", "pavement"),
                       ("in front of a brick wall", "against a red brick wall",
                        "by a brick wall"),
                       ("a brick wall", "red bricks", "a wall of bricks")),
        BackgroundKind("road", ("road", "street", "asphalt", "pavement"),
                       ("street", "city", "highway"), ("sky", "road"),
                       ("road", "asphalt", "ground"),
                       ("on the road", "on a grey street", "on the asphalt"),
                       ("a grey road", "an asphalt street", "an empty road")),
    )
}  # fmt: skip
