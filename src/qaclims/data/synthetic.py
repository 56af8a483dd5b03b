"""A deterministic synthetic world in the PASCAL VOC layout, for the demo and the tests.

Six object classes with distinct shapes, colours and textures (``ball`` a red disc with a
white band, ``box`` a purple striped square, ``kite`` a yellow diamond with spars, ``ring``
an orange and white life ring, ``star`` a pink dotted star, ``cross`` a white outlined
plus) on six textured backgrounds (grass, sky, water, sand, brick wall, road). Every class
has a *context* background that is used with probability ``p_context``: a plain CAM
classifier is tempted to fire on the background (like boats on water), which is what
QA-CLIMS' background text is meant to fix.

``run(out_root, cfg)`` writes::

    JPEGImages/<id>.jpg  SegmentationClass/<id>.png  ImageSets/Segmentation/<split>.txt
    classes.json  world.json  scene.parquet  answers.parquet  captions.parquet

- ``scene.parquet``: one row per object: image_id, split, class_name, class_index,
  background, neighbours (list of the other class names in the image), bbox
  ``[x0, y0, x1, y1)`` of its visible pixels (x1, y1 exclusive), area_fraction (visible
  pixels / image pixels).
- ``answers.parquet``: what a VQA model would answer to every question of
  :data:`DEFAULT_QUESTIONS` for every (image, present class): image_id, class_name, kind
  (``fg``/``bg``), question, answer.
- ``captions.parquet``: image_id, region (``image``, ``fg:<class>`` or ``bg``), caption:
  whole-image captions, each object described alone (with ``plural_captions`` also in the
  plural, as the answers may name it), the background described alone.

Each image is drawn from its own generator seeded by ``(seed, split, index)``, so output is
byte-for-byte reproducible and does not depend on the order or number of images generated.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from qaclims.core.config import setting
from qaclims.core.errors import ConfigError
from qaclims.core.io import PathLike, atomic_path, write_image, write_json, write_label_png
from qaclims.data.synthetic_text import SceneObject, answers_for, captions_for
from qaclims.data.synthetic_world import BACKGROUNDS, OBJECTS, ObjectKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticConfig:
    """The generated demo world (VOC layout).

    seed: base seed; image ``i`` of split ``s`` uses the generator seeded by (seed, s, i).
    image_size: side of the square images in pixels.
    num_images: images per split, in split order.
    classes: object classes to use (a subset of ball, box, kite, ring, star, cross), in
        class-index order.
    p_context: probability that an image's background is its first object's context.
    p_two_classes: probability that an image holds two objects of different classes.
    object_area: range of the fraction of the image the objects cover together.
    max_overlap: largest overlap of two objects, as a fraction of the smaller one.
    placement_tries: random placements tried for a two-object image before the least
        overlapping one is kept.
    shrink_per_try: factor applied to both objects' areas after each failed placement.
    colour_jitter: largest per-channel change of an object's colour.
    pixel_noise: standard deviation of the Gaussian noise added to every pixel.
    jpeg_quality: JPEG quality of the images.
    answer_noise: probability that a VQA answer is uninformative ("nothing", "yes", "").
    p_class_name: probability that a foreground answer is the class name itself.
    p_plural: probability that a foreground answer is put in the plural.
    captions_per_region: captions per image, per object and for the background.
    plural_captions: one more caption per object naming it in the plural ("bouncy balls"),
        as foreground answers may (``p_plural``), so the tiny CLIP learns the plural words
        that the reference's answer rules keep (off in the demo: measured with blank
        samples in the README).
    """

    seed: int = 0
    image_size: int = setting(128, ge=8)
    num_images: dict[str, int] = field(default_factory=lambda: {"train": 240, "val": 80})
    classes: tuple[str, ...] = tuple(OBJECTS)
    p_context: float = setting(0.8, ge=0.0, le=1.0)
    p_two_classes: float = setting(0.35, ge=0.0, le=1.0)
    object_area: tuple[float, ...] = setting((0.10, 0.35), gt=0.0, le=1.0, min_items=2)
    max_overlap: float = setting(0.1, ge=0.0, le=1.0)
    placement_tries: int = setting(20, ge=1)
    shrink_per_try: float = setting(0.95, gt=0.0, le=1.0)
    colour_jitter: int = setting(20, ge=0)
    pixel_noise: float = setting(6.0, ge=0.0)
    jpeg_quality: int = setting(95, ge=1, le=100)
    answer_noise: float = setting(0.1, ge=0.0, le=1.0)
    p_class_name: float = setting(0.2, ge=0.0, le=1.0)
    p_plural: float = setting(0.15, ge=0.0, le=1.0)
    captions_per_region: int = setting(2, ge=1)
    plural_captions: bool = False

    def __post_init__(self) -> None:
        _validate(self)


def _validate(cfg: SyntheticConfig) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"synthetic.{key} {what}, got {getattr(cfg, key)!r}")

    unknown = [c for c in cfg.classes if c not in OBJECTS]
    need(not unknown, "classes", f"must be names among {list(OBJECTS)}")
    need(len(cfg.classes) == len(set(cfg.classes)) > 0, "classes", "must be distinct, >= 1")
    need(cfg.seed >= 0, "seed", "must be >= 0")
    need(cfg.image_size >= 32, "image_size", "must be >= 32")
    need(all(n >= 0 for n in cfg.num_images.values()), "num_images", "must be >= 0")
    for key in ("p_context", "p_two_classes", "max_overlap", "answer_noise", "p_class_name",
                "p_plural"):  # fmt: skip
        need(0.0 <= getattr(cfg, key) <= 1.0, key, "must be in [0, 1]")
    lo_hi = cfg.object_area
    need(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 0.5, "object_area", "must be [lo, hi]")
    need(0.0 < cfg.shrink_per_try <= 1.0, "shrink_per_try", "must be in (0, 1]")
    need(cfg.placement_tries >= 1, "placement_tries", "must be >= 1")
    need(cfg.captions_per_region >= 1, "captions_per_region", "must be >= 1")


# ---------------------------------------------------------------- shapes and textures
# Every shape lies inside the unit disc of its own frame (u, v), scaled by the radius r.


def _star(u: np.ndarray, v: np.ndarray, inner: float = 0.45) -> np.ndarray:
    sector = 2 * math.pi / 5
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    a = np.abs(np.mod(phi + sector / 2, sector) - sector / 2)
    px, py = rho * np.cos(a), rho * np.sin(a)
    bx, by = inner * math.cos(sector / 2) - 1.0, inner * math.sin(sector / 2)
    return bx * py - by * (px - 1.0) >= 0


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 1 / math.sqrt(2),
    "diamond": lambda u, v: np.abs(u) / 0.6 + np.abs(v) <= 1.0,
    "annulus": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "star": _star,
    "cross": lambda u, v: (
        ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    ),
}


@cache
def unit_area(shape: str) -> float:
    """Area of ``shape`` at radius 1 (measured on a 512x512 grid over [-1, 1]^2)."""
    t = (np.arange(512) + 0.5) / 256 - 1.0
    u, v = np.meshgrid(t, t)
    return float(SHAPES[shape](u, v).mean() * 4.0)


def _texture(shape: str, u: np.ndarray, v: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``HxWx3 float`` colours of an object of ``shape`` in its frame (u, v)."""
    rgb = np.broadcast_to(colour, (*u.shape, 3)).astype(np.float32)
    white, dark = np.float32(245.0), np.float32(45.0)
    if shape == "disc":  # shaded ball with a white band
        rgb = rgb * (1.0 - 0.3 * (u * u + v * v))[..., None]
        rgb[np.abs(v) < 0.18] = white
    elif shape == "square":  # diagonal stripes
        rgb[np.mod((u + v) * 3.0, 1.0) < 0.5] *= 0.7
    elif shape == "diamond":  # two spars
        rgb[(np.abs(u) < 0.05) | (np.abs(v) < 0.04)] = dark
    elif shape == "annulus":  # four white segments
        rgb[np.mod(np.arctan2(v, u) + 2 * math.pi, math.pi / 2) < math.pi / 6] = white
    elif shape == "star":  # lighter dots
        rgb[np.sin(u * 14.0) * np.sin(v * 14.0) > 0.6] = white
    elif shape == "cross":  # dark outline
        rgb[~SHAPES["cross"](u / 0.85, v / 0.85)] = dark
    return rgb


# ------------------------------------------------------------------------- backgrounds


def _smooth_noise(rng: np.random.Generator, s: int, axis: int, k: int) -> np.ndarray:
    n = rng.normal(size=(s, s)).astype(np.float32)
    return sum((np.roll(n, i, axis=axis) for i in range(k)), np.zeros_like(n)) / math.sqrt(k)


def _background(kind: str, rng: np.random.Generator, s: int) -> np.ndarray:
    """``SxSx3 float32`` texture of background ``kind`` (values roughly in [0, 255])."""
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) * (128.0 / s)
    img = np.empty((s, s, 3), np.float32)
    if kind == "grass":
        img[:] = (60, 140, 50)
        img += (_smooth_noise(rng, s, 0, 6) * 18.0)[..., None]
    elif kind == "sky":
        t = (y / 128.0)[..., None]
        img[:] = (1 - t) * np.array([80, 145, 230], np.float32) + t * np.array(
            [170, 205, 245], np.float32
        )
        for _ in range(int(rng.integers(1, 4))):
            cx, cy, a = rng.uniform(0, 128), rng.uniform(0, 90), rng.uniform(12, 30)
            cloud = np.exp(-(((x - cx) / a) ** 2) - ((y - cy) / (a * 0.45)) ** 2)[..., None]
            img = img * (1 - cloud) + 250.0 * cloud
    elif kind == "water":
        img[:] = (30, 80, 150)
        f, ph = rng.uniform(0.15, 0.3), rng.uniform(0, 2 * math.pi)
        waves = np.sin(y * f * 2 + 2.0 * np.sin(x * f * 0.5 + ph))
        img[waves > 0.8] = (90, 150, 210)
    elif kind == "sand":
        img[:] = (220, 195, 140)
        img[rng.random((s, s)) < 0.08] = (175, 145, 95)
    elif kind == "brick wall":
        img[:] = (165, 70, 50)
        img += (rng.normal(size=(s, s)) * 8.0).astype(np.float32)[..., None]
        row = np.floor(y / 16.0)
        mortar = (np.mod(y, 16.0) < 2.0) | (np.mod(x + 16.0 * np.mod(row, 2), 32.0) < 2.0)
        img[mortar] = (200, 200, 190)
    else:  # road
        img[:] = (85, 85, 90)
        img += (rng.normal(size=(s, s)) * 10.0).astype(np.float32)[..., None]
        img[(np.abs(y - 64.0) < 2.5) & (np.mod(x, 32.0) < 16.0)] = (235, 235, 235)
    return img


# ---------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Placed:
    """One object of an image: class, centre, radius (pixels), rotation, colour."""

    kind: ObjectKind
    class_index: int
    cx: float
    cy: float
    r: float
    theta: float
    colour: tuple[int, int, int]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of every other image."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _frame(p: Placed, s: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    c, sn = math.cos(p.theta), math.sin(p.theta)
    dx, dy = x - p.cx, y - p.cy
    return (dx * c + dy * sn) / p.r, (-dx * sn + dy * c) / p.r


def object_mask(p: Placed, s: int) -> np.ndarray:
    """``SxS bool``: pixels (by their centres) inside object ``p``."""
    u, v = _frame(p, s)
    return np.asarray(SHAPES[p.kind.shape](u, v))


def _propose(rng: np.random.Generator, kind: ObjectKind, idx: int, area: float,
             cfg: SyntheticConfig) -> Placed:  # fmt: skip
    s = cfg.image_size
    r = min(s * math.sqrt(area / unit_area(kind.shape)), 0.45 * s)
    cx, cy = rng.uniform(r, s - r, size=2)
    jitter = rng.integers(-cfg.colour_jitter, cfg.colour_jitter + 1, size=3)
    c = np.clip(np.array(kind.colour) + jitter, 0, 255)
    theta = float(rng.uniform(0, 2 * math.pi))
    return Placed(kind, idx, float(cx), float(cy), r, theta, (int(c[0]), int(c[1]), int(c[2])))


def _place_pair(rng: np.random.Generator, kinds: Sequence[ObjectKind], picks: Sequence[int],
                areas: Sequence[float], cfg: SyntheticConfig) -> list[Placed]:  # fmt: skip
    """Two objects whose overlap is at most ``max_overlap`` of the smaller one.

    Both are re-drawn on each of ``placement_tries`` tries, their areas shrunk by
    ``shrink_per_try`` after each failed one (large stars do not fit side by side); the
    least overlapping pair of all tries is kept when none is good enough.
    """
    best: tuple[float, list[Placed]] | None = None
    for t in range(cfg.placement_tries):
        f = cfg.shrink_per_try**t
        pair = [
            _propose(rng, k, i, a * f, cfg) for k, i, a in zip(kinds, picks, areas, strict=True)
        ]
        m0, m1 = (object_mask(p, cfg.image_size) for p in pair)
        overlap = float((m0 & m1).sum() / max(1, min(m0.sum(), m1.sum())))
        if best is None or overlap < best[0]:
            best = (overlap, pair)
        if overlap <= cfg.max_overlap:
            break
    assert best is not None
    return best[1]


def sample_layout(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[str, list[Placed]]:
    """``(background, objects in drawing order)`` of one image.

    One or (with ``p_two_classes``) two objects of different classes; the background is the
    first object's context with probability ``p_context``, else one of the others.
    """
    n = 2 if len(cfg.classes) > 1 and rng.random() < cfg.p_two_classes else 1
    picks = [int(i) for i in rng.choice(len(cfg.classes), size=n, replace=False)]
    kinds = [OBJECTS[cfg.classes[i]] for i in picks]
    others = [b for b in BACKGROUNDS if b != kinds[0].context]
    use_context = rng.random() < cfg.p_context
    bg = kinds[0].context if use_context else others[int(rng.integers(len(others)))]
    total = float(rng.uniform(cfg.object_area[0], cfg.object_area[1]))
    share = float(rng.uniform(0.4, 0.6))
    if n == 1:
        return bg, [_propose(rng, kinds[0], picks[0], total, cfg)]
    return bg, _place_pair(rng, kinds, picks, (total * share, total * (1 - share)), cfg)


def render(
    rng: np.random.Generator, bg: str, objects: Sequence[Placed], cfg: SyntheticConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``(SxSx3 uint8 RGB image, SxS uint8 label map)``: 0 background, ``class_index + 1``.

    Objects are painted in order (a later one covers an earlier one).
    """
    s = cfg.image_size
    img = _background(bg, rng, s)
    label = np.zeros((s, s), np.uint8)
    for p in objects:
        u, v = _frame(p, s)
        m = SHAPES[p.kind.shape](u, v)
        img[m] = _texture(p.kind.shape, u, v, np.array(p.colour, np.float32))[m]
        label[m] = p.class_index + 1
    img += rng.normal(scale=cfg.pixel_noise, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


# ------------------------------------------------------------------------------ writing

SCENE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("split", pa.string()), ("class_name", pa.string()),
    ("class_index", pa.int64()), ("background", pa.string()),
    ("neighbours", pa.list_(pa.string())), ("bbox", pa.list_(pa.int64())),
    ("area_fraction", pa.float64()),
])  # fmt: skip
ANSWERS_SCHEMA = pa.schema(
    [(c, pa.string()) for c in ("image_id", "class_name", "kind", "question", "answer")]
)
CAPTIONS_SCHEMA = pa.schema([(c, pa.string()) for c in ("image_id", "region", "caption")])


def _write_table(path: Path, rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> None:
    data = {name: [r[name] for r in rows] for name in schema.names}
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pydict(data, schema=schema), tmp)


def _scene_objects(label: np.ndarray, objects: Sequence[Placed]) -> list[SceneObject]:
    out = []
    for p in objects:
        ys, xs = np.nonzero(label == p.class_index + 1)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        out.append(SceneObject(p.kind, bbox, float(len(xs) / label.size)))
    return out


@dataclass
class _Tables:
    scene: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, str]] = field(default_factory=list)
    captions: list[dict[str, str]] = field(default_factory=list)


def _make_image(root: Path, split: str, index: int, cfg: SyntheticConfig,
                tables: _Tables) -> str:  # fmt: skip
    image_id = f"{split}_{index:06d}"
    rng = image_rng(cfg.seed, split, index)
    bg, placed = sample_layout(rng, cfg)
    img, label = render(rng, bg, placed, cfg)
    write_image(root / "JPEGImages" / f"{image_id}.jpg", img, quality=cfg.jpeg_quality)
    write_label_png(root / "SegmentationClass" / f"{image_id}.png", label)
    objs = _scene_objects(label, placed)
    for o, p in zip(objs, placed, strict=True):
        tables.scene.append({
            "image_id": image_id, "split": split, "class_name": o.kind.name,
            "class_index": p.class_index, "background": bg,
            "neighbours": [x.kind.name for x in objs if x is not o], "bbox": list(o.bbox),
            "area_fraction": o.area_fraction,
        })  # fmt: skip
    bgk = BACKGROUNDS[bg]
    tables.answers += answers_for(rng, image_id, objs, bgk, cfg)
    tables.captions += captions_for(rng, image_id, objs, bgk, cfg.captions_per_region,
                                    plural=cfg.plural_captions)  # fmt: skip
    return image_id


def world_description(cfg: SyntheticConfig) -> dict[str, Any]:
    """The world as JSON-able data: classes (shape, colour, context, words) and backgrounds."""
    return {
        "classes": [vars(OBJECTS[c]) for c in cfg.classes],
        "backgrounds": [vars(b) for b in BACKGROUNDS.values()],
    }


def run(out_root: PathLike, cfg: SyntheticConfig) -> None:
    """Write the synthetic VOC-layout tree and its tables under ``out_root`` (see module doc)."""
    root = Path(out_root)
    tables = _Tables()
    for split, n in cfg.num_images.items():
        ids = [_make_image(root, split, i, cfg, tables)
               for i in tqdm(range(n), desc=f"synthetic {split}", leave=False)]  # fmt: skip
        split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        with atomic_path(split_file) as tmp:
            tmp.write_text("".join(f"{i}\n" for i in ids))
        log.info("synthetic %s: %d images", split, n)
    write_json(root / "classes.json", {"dataset": "synthetic", "classes": list(cfg.classes)})
    write_json(root / "world.json", world_description(cfg))
    _write_table(root / "scene.parquet", tables.scene, SCENE_SCHEMA)
    _write_table(root / "answers.parquet", tables.answers, ANSWERS_SCHEMA)
    _write_table(root / "captions.parquet", tables.captions, CAPTIONS_SCHEMA)
