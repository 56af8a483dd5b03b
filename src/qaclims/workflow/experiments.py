"""Experiments: named variants of the run's settings, each over several seeds, in one DAG.

A variant is a set of overrides of result-affecting settings of stages from ``vqa`` on, for
example ``{train_ritc: {w_bg: 0.0}}``. A *cell* is one (variant, seed). A stage is in a
cell's *reach* when the variant overrides one of the config sections it reads, when a stage
it reads from is in reach, or when it is ``experiments.from`` (default ``train_ritc``) or
downstream of it; every other stage is the run's own, computed once and shared by all cells.
A cell's stages in reach live under ``results/<run>/experiments/<variant>/seed<seed>/``, and
their ``seed`` setting (where the stage has one) is the cell's seed; stages in reach that no
seed changes (upstream of every seeded stage in reach) are computed once per variant, under
``results/<run>/experiments/<variant>/common/``.

Config (``experiments:``)::

    experiments:
      seeds: [0, 1, 2]            # every variant's seeds, unless it names its own
      reference: paper            # the variant the comparison's deltas are taken against
      until: eval_cam             # the last evaluation a cell runs
      from: train_ritc            # seeds (and so a cell of its own) start here
      variants:
        paper: {}
        no_bg: {train_ritc: {w_bg: 0.0}}
        class_only: {text_features: {class_weight: 1.0}, seeds: [0]}

Standard library only at import time (the Snakefile imports it at every parse).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qaclims.core.errors import ConfigError

# stage -> (config sections it reads, stages it reads from); in topological order.
# ``train_cam.model`` etc.: a stage reading only a sub-key of another stage's section.
GRAPH: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train_tiny_blip": (("train_tiny_blip",), ()),
    "vqa": (("vqa",), ("train_tiny_blip",)),
    "corpus": (("corpus",), ("vqa",)),
    "train_tiny_clip": (("train_tiny_clip", "clip"), ()),
    "text_features": (("text_features", "clip"), ("corpus", "train_tiny_clip")),
    "train_cam": (("train_cam", "released.cam"), ()),
    "train_ritc": (
        ("train_ritc", "clip", "train_cam.model", "released.ritc"),
        ("train_cam", "text_features", "train_tiny_clip"),
    ),
    "make_cam": (("make_cam", "train_cam.model"), ("train_cam", "train_ritc")),
    "eval_cam": (("eval_cam",), ("make_cam",)),
    "cam_to_ir_label": (("cam_to_ir_label",), ("make_cam",)),
    "eval_seeds": ((), ("cam_to_ir_label",)),
    "train_irn": (("train_irn",), ("cam_to_ir_label", "train_cam")),
    "make_sem_seg": (("make_sem_seg", "train_irn.model"), ("make_cam", "train_irn")),
    "eval_sem_seg": ((), ("make_sem_seg",)),
    "train_deeplab": (("train_deeplab", "released.deeplab"), ("make_sem_seg",)),
    "infer_deeplab": (("infer_deeplab", "train_deeplab.model"), ("train_deeplab",)),
    "eval_deeplab": ((), ("infer_deeplab",)),
}

# Sections a variant may override: every stage section from vqa on.
SECTIONS = (
    "train_tiny_blip",
    "vqa",
    "corpus",
    "clip",
    "train_tiny_clip",
    "text_features",
    "train_cam",
    "train_ritc",
    "make_cam",
    "eval_cam",
    "cam_to_ir_label",
    "train_irn",
    "make_sem_seg",
    "train_deeplab",
    "infer_deeplab",
    "released",
)

#: training stage -> its key under ``released``: a file there replaces the training
RELEASED = {"train_cam": "cam", "train_ritc": "ritc", "train_deeplab": "deeplab"}

# The evaluations a cell can run up to, in DAG order, with the comparison's columns of each.
UNTIL = ("eval_cam", "eval_seeds", "eval_sem_seg", "eval_deeplab")

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
COMMON = "common"  # the folder of a variant's stages that no seed changes


@dataclass(frozen=True)
class Cell:
    """One (variant, seed) of an experiment."""

    variant: str
    seed: int


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    """``{"a.b.c": leaf}`` of a nested mapping (an empty mapping overrides nothing)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def variants(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The experiment's variants: name -> overrides (without ``seeds``)."""
    return {
        name: {k: v for k, v in (body or {}).items() if k != "seeds"}
        for name, body in config["experiments"]["variants"].items()
    }


def seeds_of(config: Mapping[str, Any], variant: str) -> list[int]:
    """The variant's own ``seeds`` list, else ``experiments.seeds``."""
    body = config["experiments"]["variants"][variant] or {}
    return [int(s) for s in body.get("seeds", config["experiments"]["seeds"])]


def cells(config: Mapping[str, Any]) -> list[Cell]:
    """Every (variant, seed) of the experiment, variants in config order."""
    return [Cell(v, s) for v in variants(config) for s in seeds_of(config, v)]


def reach(config: Mapping[str, Any], variant: str) -> frozenset[str]:
    """Stages a cell of ``variant`` computes itself (see the module docstring)."""
    touched = set(_flat(variants(config)[variant], ""))
    start = config["experiments"]["from"]
    out: set[str] = set()
    for stage, (sections, upstream) in GRAPH.items():
        reads = any(
            key == sec or key.startswith(sec + ".") or sec.startswith(key + ".")
            for key in touched
            for sec in sections
        )
        if stage == start or reads or any(u in out for u in upstream):
            out.add(stage)
    return frozenset(out)


def replaced(config: Mapping[str, Any], variant: str) -> frozenset[str]:
    """Training stages of the variant's reach that a released network replaces (its
    ``released.<net>`` file, the variant's own or the run's)."""
    merged = copy.deepcopy(dict(config["released"]))
    _merge(merged, variants(config)[variant].get("released", {}))
    stages = reach(config, variant)
    return frozenset(s for s, key in RELEASED.items() if s in stages and merged[key])


def seeded(config: Mapping[str, Any], variant: str) -> frozenset[str]:
    """Stages of the variant's reach whose output depends on the cell's seed: a stage with a
    ``seed`` setting, and every stage in reach downstream of one. The other stages in reach
    (say text_features of a variant that changes the text) are computed once per variant
    and shared by its seeds."""
    stages = reach(config, variant)
    released = replaced(config, variant)
    out: set[str] = set()
    for stage, (_, upstream) in GRAPH.items():
        if stage not in stages:
            continue
        own = (
            isinstance(config.get(stage), Mapping)
            and "seed" in config[stage]
            and stage not in released  # a released network is one file, whatever the seed
        )
        if own or any(u in out for u in upstream):
            out.add(stage)
    return frozenset(out)


def _setting(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _overridden(config: Mapping[str, Any], variant: str, seed: int) -> dict[str, Any]:
    """The run's config with the variant's overrides and the cell's seed in every stage of
    its reach that has one (:func:`cell_config` before it moves a retrained tiny BLIP)."""
    out = copy.deepcopy(dict(config))
    _merge(out, variants(config)[variant])
    for stage in reach(config, variant):
        section = out.get(stage)
        if isinstance(section, dict) and "seed" in section:
            section["seed"] = int(seed)
    return out


def same_as_run(config: Mapping[str, Any], variant: str, seed: int) -> frozenset[str]:
    """Stages of the cell's reach that compute exactly what the run's own do: every setting
    they read equals the run's (the seed included) and so does every stage they read from.
    They are read from the run, not computed again: the cell ``{}`` (or overrides equal to
    the run's) at the run's own seed is the run itself."""
    cell = _overridden(config, variant, seed)
    stages = reach(config, variant)
    released = replaced(config, variant)
    out: set[str] = set()
    for stage, (sections, upstream) in GRAPH.items():
        if stage not in stages or stage in released:
            continue
        own = all(_setting(cell, sec) == _setting(config, sec) for sec in sections)
        if own and all(u not in stages or u in out for u in upstream):
            out.add(stage)
    return frozenset(out)


def folder(
    config: Mapping[str, Any],
    variant: str,
    seed: int,
    stage: str,
    same: frozenset[str] | None = None,
) -> str | None:
    """The cell's folder of ``stage`` under ``results/<run>/experiments/<variant>/``:
    ``seed<seed>`` for a seeded stage, ``common`` for one shared by the variant's seeds,
    ``common/released_<net>`` for a training stage a released network replaces, ``None``
    where the stage is the run's own: not in the variant's reach, or computing exactly what
    the run's does (:func:`same_as_run`; ``same``: its value for this cell, if known)."""
    if stage not in reach(config, variant):
        return None
    if stage in (same if same is not None else same_as_run(config, variant, seed)):
        return None
    if stage in replaced(config, variant):
        return f"{COMMON}/released_{RELEASED[stage]}"
    return f"seed{seed}" if stage in seeded(config, variant) else COMMON


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict) and v:
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)


def cell_config(config: Mapping[str, Any], variant: str, seed: int) -> dict[str, Any]:
    """The run's config with the variant's overrides, and ``seed`` as the seed of every
    seeded stage in the cell's reach. A VQA model the run trains itself (the demo's tiny
    BLIP, ``results/<run>/train_tiny_blip``) is the cell's own when the cell retrains it."""
    out = _overridden(config, variant, seed)
    own_blip = f"results/{config['run']}/train_tiny_blip"
    where = folder(config, variant, seed, "train_tiny_blip")
    if out["vqa"]["model"] == own_blip and where is not None:
        out["vqa"]["model"] = (
            f"results/{config['run']}/experiments/{variant}/{where}/train_tiny_blip"
        )
    return out


def job_config(config: Mapping[str, Any], wildcards: Mapping[str, str]) -> Mapping[str, Any]:
    """The config a job runs with: its cell's (wildcards ``exp`` and ``cell``, ``seed<s>``
    or ``common``, of the rules of ``workflow/rules/experiments.smk``), else the run's own."""
    if "exp" in wildcards and "cell" in wildcards:
        variant, cell = str(wildcards["exp"]), str(wildcards["cell"])
        seed = seeds_of(config, variant)[0] if cell == COMMON else int(cell.removeprefix("seed"))
        return cell_config(config, variant, seed)
    return config


def targets_until(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The evaluations every cell runs: ``eval_cam`` up to ``experiments.until``, within
    what the run itself enables (refinement, DeepLab)."""
    last = UNTIL.index(config["experiments"]["until"])
    out = list(UNTIL[: last + 1])
    if not config["refine"]["enabled"]:
        out = [e for e in out if e == "eval_cam"]
    if not config["deeplab"]["enabled"]:
        out = [e for e in out if e != "eval_deeplab"]
    return tuple(out)


def check(
    config: Mapping[str, Any],
    schema: Mapping[str, Any],
    validate: Callable[[dict[str, Any]], None],
) -> None:
    """Every variant's name, keys and values, before any job runs.

    ``schema``: the workflow's JSON schema (for ``x-result``); ``validate(cfg)`` raises on a
    config the workflow would reject (the JSON schema and the stages' typed configs). Errors
    are :class:`ConfigError` naming ``experiments.variants.<name>`` and the key.
    """
    exp = config["experiments"]
    names = list(exp["variants"])
    if exp["reference"] and exp["reference"] not in names:
        raise ConfigError(
            f"config key experiments.reference: {exp['reference']!r} is not one of "
            f"experiments.variants {names}"
        )
    if exp["from"] not in GRAPH:
        raise ConfigError(
            f"config key experiments.from: {exp['from']!r} is not a stage ({list(GRAPH)})"
        )
    for name in names:
        where = f"experiments.variants.{name}"
        if not NAME.match(name):
            raise ConfigError(f"config key {where}: a variant name is letters, digits, _, . and -")
        body = exp["variants"][name] or {}
        if not isinstance(body, Mapping):
            raise ConfigError(f"config key {where}: a mapping of overrides, not {body!r}")
        seeds = body.get("seeds", exp["seeds"])
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        ):
            raise ConfigError(f"config key {where}.seeds: a non-empty list of integers >= 0")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"config key {where}.seeds: {seeds} repeats a seed")
        for key, value in _flat(variants(config)[name], "").items():
            top = key.split(".")[0]
            if top not in SECTIONS:
                raise ConfigError(
                    f"config key {where}.{key}: a variant overrides stage settings from vqa "
                    f"on ({', '.join(SECTIONS)}), not {top!r}"
                )
            node: Any = schema["properties"]
            spec: Any = None
            for part in key.split("."):
                spec = node.get(part) if isinstance(node, Mapping) else None
                if spec is None:
                    raise ConfigError(f"config key {where}.{key}: unknown setting {part!r}")
                if spec.get("x-result") is False:
                    raise ConfigError(
                        f"config key {where}.{key}: changes no result (a runtime setting); "
                        "a variant overrides result-affecting settings only"
                    )
                if "additionalProperties" in spec and "properties" not in spec:
                    break  # a free-form mapping (synonyms, questions): values checked below
                node = spec.get("properties", {})
            if value is None and spec is not None and "null" not in str(spec.get("type")):
                raise ConfigError(f"config key {where}.{key}: no value given")
        try:
            validate(cell_config(config, name, int(seeds[0])))
        except Exception as e:  # noqa: BLE001  the validator's own message, with the variant
            raise ConfigError(f"config {where}: {e}") from e
