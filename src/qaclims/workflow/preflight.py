"""Checks the workflow runs when it is parsed, before any job starts.

- :func:`validate_config` (:mod:`qaclims.core.validate`): the merged config against the JSON
  schema, defaults filled in (as Snakemake's ``validate(..., set_default=True)``, on the
  schema the Snakefile has already loaded with the C YAML loader: Snakemake's own call loads
  it again in pure Python, 0.5 s of every parse, SLURM jobs included); the error names the
  key.
- :func:`check_test_split`: the split segmented for the VOC evaluation server is an
  unlabelled VOC split of a run with DeepLab.
- :func:`check_paths`: every file or folder the run needs and cannot make itself (data set
  root and layout, checkpoint files named by path) exists; the error names the config key and
  the absolute path.
- :func:`check_pretrained`: with ``HF_HUB_OFFLINE`` set, every pretrained model the run
  downloads (:mod:`qaclims.models.pretrained`) is in this machine's caches; the error names
  the config keys and the command that fetches them.
- :func:`check_stage_configs`: every stage's typed config is built from the resolved config,
  so cross-field checks of the config classes fail at parse time, naming the key. Building
  them imports the stage modules (torch), so a successful check is remembered per config and
  library version under ``.snakemake/`` and later parses (and SLURM jobs) skip it.
- :func:`data_fingerprint`: size and mtime of every input file of the data set, so editing
  an image, label or annotation reruns the manifest and everything after it.

- :func:`put_on_pythonpath`: jobs import the library from the checkout.

Standard library only at import time.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qaclims.core.errors import ConfigError
from qaclims.core.validate import validate_config
from qaclims.models import model_cache, pretrained

__all__ = ["validate_config"]  # re-exported: the Snakefile's and the tests' name for it

PRETRAINED_WORDS = {"imagenet", "none", ""}
# Environment variables that move the caches pretrained models are read from.
PRETRAINED_CACHE_VARS = (
    "HOME",
    "XDG_CACHE_HOME",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TORCH_HOME",
)


def _missing(key: str, path: Path, what: str) -> ConfigError:
    return ConfigError(f"config key {key}: {what} {path.resolve()} does not exist")


def _require(key: str, value: str, kind: str = "file") -> None:
    p = Path(value).expanduser()
    ok = p.is_file() if kind == "file" else p.is_dir()
    if not ok:
        raise _missing(key, p, kind)


def _dataset_paths(d: Mapping[str, Any]) -> Iterable[tuple[str, Path, str]]:
    root = Path(d["root"])
    if d["name"] == "voc12":
        v = d["voc12"]
        yield "dataset.voc12.image_dir", root / v["image_dir"], "dir"
        for s in d["splits"]:
            yield "dataset.splits", root / v["split_dir"] / f"{s}.txt", "file"
        if v["label_source"] == "xml":
            yield "dataset.voc12.annotation_dir", root / v["annotation_dir"], "dir"
    elif d["name"] == "coco14":
        c = d["coco14"]
        for s in d["splits"]:
            ann = root / c["annotation_file"].format(split=s)
            yield "dataset.coco14.image_dir", root / c["image_dir"].format(split=s), "dir"
            yield "dataset.coco14.annotation_file", ann, "file"


def check_paths(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the key and absolute path of the first missing input.

    Only inputs the planned DAG reads are checked (e.g. DeepLab weights only with
    ``deeplab.enabled``).
    """
    d = config["dataset"]
    if d["name"] != "synthetic":
        if not d.get("root"):
            raise ConfigError("config key dataset.root is empty: set it to the data set's folder")
        _require("dataset.root", d["root"], "dir")
        for key, path, kind in _dataset_paths(d):
            ok = path.is_file() if kind == "file" else path.is_dir()
            if not ok:
                raise _missing(key, path, kind)
        test = config["splits"].get("test", "")
        if test and d["name"] == "voc12":
            lst = Path(d["root"]) / d["voc12"]["split_dir"] / f"{test}.txt"
            if not lst.is_file():
                raise _missing("splits.test", lst, "file")
    rel = config["released"]
    for key in ("cam", "ritc", "deeplab"):
        if rel.get(key):
            _require(f"released.{key}", rel[key])
    model = config["train_deeplab"]["model"]
    if rel.get("deeplab") and (model["style"], model["version"]) != ("caffe", "v2"):
        raise ConfigError(
            "released.deeplab: a deeplab-pytorch checkpoint is a DeepLab-v2 in the Caffe layout; "
            "set train_deeplab.model.version: v2 and train_deeplab.model.style: caffe"
        )
    if config["refine"]["enabled"] and config["train_irn"]["backbone_from"] == "train_cam":
        check_irn_backbone(config)
    for stage in pretrained.backbone_stages(config):
        w = config[stage]["model"]["backbone"]["weights"]
        if w not in PRETRAINED_WORDS:
            _require(f"{stage}.model.backbone.weights", w)
    trains_ritc = pretrained.trains_ritc(config)
    if trains_ritc and config["clip"]["name"] != "tiny":
        if pretrained.names_a_file(config["clip"]["pretrained"]):
            _require("clip.pretrained", config["clip"]["pretrained"])
        if config["clip"]["ovseg_checkpoint"]:
            _require("clip.ovseg_checkpoint", config["clip"]["ovseg_checkpoint"])
    v = config["vqa"]
    if trains_ritc:
        if v["backend"] == "blip" and v["model"].startswith(("/", "./", "../", "~")):
            _require("vqa.model", v["model"], "dir")
        run_dir = str(Path("results") / config["run"])
        if v["backend"] == "precomputed":
            for kind in ("fg", "bg"):
                path = v["precomputed"][kind]
                if not path:
                    raise ConfigError(f"config key vqa.precomputed.{kind} is empty")
                if not path.startswith(run_dir + os.sep):  # made by this run's own rules
                    _require(f"vqa.precomputed.{kind}", path)


def check_pretrained(config: Mapping[str, Any], cache_dir: str | Path | None = None) -> None:
    """When offline (:func:`qaclims.models.pretrained.offline`: ``HF_HUB_OFFLINE`` set),
    raise :class:`ConfigError` listing every model of
    :func:`qaclims.models.pretrained.needed` that this machine's caches lack (key, model,
    the fetch command). Found locations are remembered under ``cache_dir`` (keyed by the
    models and the cache variables), so later parses only stat them. Skipped when not
    offline, and in a driver env without the model libraries (the job names the model)."""
    if not pretrained.offline():
        return
    wanted = pretrained.needed(config)
    if not wanted:
        return
    env = {k: os.environ.get(k, "") for k in PRETRAINED_CACHE_VARS}
    ident = [[p.source, p.name, p.tag] for p in wanted]
    digest = hashlib.sha256(json.dumps([ident, env]).encode()).hexdigest()[:32]
    marker = Path(cache_dir) / f"pretrained-{digest}.json" if cache_dir else None
    if marker is not None and marker.is_file():
        try:
            if all(Path(w).exists() for w in json.loads(marker.read_text())):
                return
        except (ValueError, TypeError):
            pass
    try:
        found = {p: model_cache.locate(p) for p in wanted}
    except ImportError:  # a light driver env (snakemake only): the job names the model
        return
    lacking = [p for p, where in found.items() if where is None]
    if lacking:
        lines = "\n".join(f"  - {p.key}: {p.what}" for p in lacking)
        raise ConfigError(
            "HF_HUB_OFFLINE is set and these pretrained models are not in this machine's "
            f"caches, so the jobs that load them would fail:\n{lines}\n"
            "Download them where the internet is reachable, into the caches these jobs read "
            "(HF_HOME / HF_HUB_CACHE, TORCH_HOME): python -m qaclims.workflow.pretrained --fetch "
            "--configfile <this run's config files>; or point the keys at local files."
        )
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps([str(w) for w in found.values()]))
        tmp.replace(marker)


def check_test_split(config: Mapping[str, Any]) -> None:
    """``splits.test`` (the split segmented for the PASCAL VOC evaluation server) must be a
    VOC split outside ``dataset.splits`` (rule test_manifest builds it without labels), none
    of the labelled splits, on a run that trains or reads a DeepLab: raise
    :class:`ConfigError` naming the key otherwise."""
    splits = config["splits"]
    test = splits.get("test", "")
    if not test:
        return
    name = config["dataset"]["name"]
    if name != "voc12":
        raise ConfigError(
            f"config key splits.test ({test!r}) is for the PASCAL VOC evaluation server; "
            f"dataset.name is {name!r}, not voc12"
        )
    labelled = {"splits.train": [splits["train"]], "splits.cam": list(splits["cam"]),
                "splits.eval_cam": [splits["eval_cam"]], "splits.val": [splits["val"]]}  # fmt: skip
    for key, names in labelled.items():
        if test in names:
            raise ConfigError(
                f"config key splits.test ({test!r}) is read without labels, so it cannot "
                f"also be {key}"
            )
    if test in config["dataset"]["splits"]:
        raise ConfigError(
            f"config key splits.test ({test!r}) is also in dataset.splits "
            f"{list(config['dataset']['splits'])}: rule test_manifest builds it without labels, "
            "the dataset rule would read its (withheld) annotations; remove it there"
        )
    if not config["deeplab"]["enabled"]:
        raise ConfigError(
            f"config key splits.test ({test!r}) needs DeepLab: deeplab.enabled is false"
        )


def check_irn_backbone(config: Mapping[str, Any]) -> None:
    """With ``train_irn.backbone_from: train_cam``, IRN's backbone must take train_cam's
    network's tensors (same architecture; for ``tiny`` the same widths and the same stages
    with a projection shortcut, see :func:`qaclims.models.backbone.tensor_layout`): raise
    :class:`ConfigError` naming both keys otherwise. Skipped in a driver env without torch
    (the job then names the file and the keys that do not fit)."""
    try:
        from qaclims.models.backbone import tensor_layout
    except ImportError:
        return
    irn = config["train_irn"]["model"]["backbone"]
    cam = config["train_cam"]["model"]["backbone"]
    layouts = [tensor_layout(b["arch"], b["widths"], b["strides"]) for b in (irn, cam)]
    if layouts[0] != layouts[1]:
        keys = ("arch",) if irn["arch"] != cam["arch"] else ("widths", "strides")
        given = ", ".join(f"{k} {irn[k]!r} vs {cam[k]!r}" for k in keys)
        raise ConfigError(
            f"config key train_irn.model.backbone ({given} in train_cam.model.backbone): "
            "train_irn.backbone_from is train_cam, so IRN's backbone must have train_cam's "
            "network's tensors (same arch; for tiny the same widths, and a stride other than "
            "1 in the same stages where two widths are equal)"
        )


def put_on_pythonpath(src_root: str | Path) -> None:
    """Put ``src_root`` first on ``PYTHONPATH`` (once), so every job the workflow starts, in
    whatever env, imports the library from this checkout."""
    root = str(src_root)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *rest])


def _library_digest(src: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(src.rglob("*.py")):
        h.update(f.relative_to(src).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def check_stage_configs(
    config: Mapping[str, Any], src: str | Path, cache_dir: str | Path | None = None
) -> bool:
    """Build every stage's typed config from ``config`` (errors name the key).

    Returns ``False`` when a remembered successful check made it unnecessary.
    """
    from qaclims.core import schema
    from qaclims.core.config import from_mapping

    digest = hashlib.sha256(
        json.dumps(config, sort_keys=True, default=str).encode()
        + _library_digest(Path(src) / "qaclims").encode()
    ).hexdigest()
    marker = Path(cache_dir) / f"config-ok-{digest[:32]}" if cache_dir else None
    if marker is not None and marker.exists():
        return False
    from qaclims.core.class_names import known_classes

    classes = set(known_classes(config))
    unknown = sorted(set(config["corpus"]["synonyms"]) - classes)
    if unknown:
        raise ConfigError(
            f"config key corpus.synonyms names {unknown}, not classes of "
            f"dataset.name {config['dataset']['name']!r} (classes: {sorted(classes)})"
        )
    skipped = []
    for key, (module, name, _) in schema.STAGES.items():
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError:  # a light driver env (snakemake only): the job checks it
            skipped.append(key)
            continue
        from_mapping(cls, config[key], key)
    if skipped:
        return True  # not remembered: a full env checks them at the next parse
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return True


def data_fingerprint(
    config: Mapping[str, Any], splits: Iterable[str] | None = None, labelled: bool = True
) -> str:
    """Digest of (path, size, mtime) of the data set's input files ("" for synthetic).

    VOC: the split lists and, for every id they list, its image, label PNG and annotation
    (``labelled=False``: the image only); COCO: the annotation files and every file in the
    image folders. ``splits``: those instead of ``dataset.splits``.
    """
    d = config["dataset"]
    if d["name"] == "synthetic":
        return ""
    root = Path(d["root"])
    files: set[Path] = set()
    chosen = list(d["splits"] if splits is None else splits)
    if d["name"] == "voc12":
        v = d["voc12"]
        for s in chosen:
            lst = root / v["split_dir"] / f"{s}.txt"
            files.add(lst)
            for i in lst.read_text().split():
                files.add(root / v["image_dir"] / f"{i}.jpg")
                if not labelled:
                    continue
                files.add(root / v["gt_dir"] / f"{i}.png")
                if v["label_source"] == "xml":
                    files.add(root / v["annotation_dir"] / f"{i}.xml")
    else:
        c = d["coco14"]
        for s in chosen:
            files.add(root / c["annotation_file"].format(split=s))
            with os.scandir(root / c["image_dir"].format(split=s)) as it:
                files |= {Path(e.path) for e in it if e.is_file()}
    h = hashlib.sha256()
    for f in sorted(files):
        try:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()
