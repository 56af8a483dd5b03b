"""The pretrained models a run downloads: which ones a config names.

A config names three kinds of downloaded weights: a transformers hub name (``vqa.model``,
BLIP), an open_clip model and pretrained tag (``clip.name`` / ``clip.pretrained``) and
torchvision's ImageNet weights (``<stage>.model.backbone.weights: imagenet``). Each library
downloads them into its own cache the first time a job loads them; on a cluster whose
compute nodes cannot reach the internet that fails inside a job, possibly hours after
submission. :func:`needed` lists what a resolved config makes the planned DAG download (the
same stages :func:`qaclims.workflow.preflight.check_paths` checks files for: one home,
:func:`backbone_stages` and :func:`trains_ritc`); :mod:`qaclims.models.model_cache` finds
them in this machine's caches and fetches them; ``python -m qaclims.workflow.pretrained``
is the command; with ``HF_HUB_OFFLINE`` set the parse checks them
(:func:`qaclims.workflow.preflight.check_pretrained`).

Standard library only, also in its functions (the Snakefile and the VQA stage import it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Source = Literal["transformers", "open_clip", "torchvision"]
TORCHVISION_TAG = "IMAGENET1K_V1"  # what backbone.weights: imagenet loads


@dataclass(frozen=True)
class Pretrained:
    """One downloaded model: the config ``key`` that names it, the library that downloads
    it, its ``name`` (hub repository, open_clip model or torchvision architecture) and
    ``tag`` (open_clip's pretrained tag, torchvision's weights name)."""

    key: str
    source: Source
    name: str
    tag: str = ""

    @property
    def what(self) -> str:
        """``source name [tag]``, e.g. ``open_clip ViT-L-14 openai``."""
        return " ".join(p for p in (self.source, self.name, self.tag) if p)


def offline() -> bool:
    """Whether this environment declares it cannot download: ``HF_HUB_OFFLINE`` is set to a
    true value (as huggingface_hub reads it: ``1``, ``ON``, ``YES``, ``TRUE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def is_hub_name(model: str) -> bool:
    """Whether a ``vqa.model`` value names a hub repository (``owner/name``) rather than a
    local folder: not starting with ``/``, ``.`` or ``~``, not existing on disk, and with
    exactly one ``/``."""
    if model.startswith(("/", ".", "~")) or Path(model).expanduser().exists():
        return False
    return model.count("/") == 1


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def names_a_file(value: str) -> bool:
    """Whether a weights value (``clip.pretrained``, ``backbone.weights``) names a local
    file rather than something downloaded: a checkpoint suffix, a path start (``/``, ``./``,
    ``../``, ``~``) or an existing file."""
    return (
        value.endswith(CHECKPOINT_SUFFIXES)
        or value.startswith(("/", "./", "../", "~"))
        or Path(value).expanduser().is_file()
    )


def backbone_stages(config: Mapping[str, Any]) -> list[str]:
    """The stages whose ``model.backbone.weights`` the planned DAG loads: train_cam unless
    its network is released, train_irn when it refines on its own backbone (not
    ``backbone_from: train_cam``), train_deeplab when DeepLab is trained."""
    rel = config["released"]
    stages = [] if rel.get("cam") else ["train_cam"]
    if config["refine"]["enabled"] and config["train_irn"]["backbone_from"] != "train_cam":
        stages.append("train_irn")
    if config["deeplab"]["enabled"] and not rel.get("deeplab"):
        stages.append("train_deeplab")
    return stages


def trains_ritc(config: Mapping[str, Any]) -> bool:
    """Whether the run trains RITC (and so loads CLIP and asks the VQA model)."""
    return "ritc" in config["methods"] and not config["released"].get("ritc")


def needed(config: Mapping[str, Any]) -> list[Pretrained]:
    """The downloaded models the workflow loads for a resolved ``config`` (schema defaults
    filled): one entry per config key, in DAG order; files and local folders are not here
    (the preflight checks that they exist)."""
    out: list[Pretrained] = []
    v = config["vqa"]
    if trains_ritc(config) and v["backend"] == "blip" and is_hub_name(v["model"]):
        out.append(Pretrained("vqa.model", "transformers", v["model"]))
    clip = config["clip"]
    tag = clip["pretrained"]
    if trains_ritc(config) and clip["name"] != "tiny" and tag not in ("", "none"):
        if not names_a_file(tag):
            out.append(Pretrained("clip.pretrained", "open_clip", clip["name"], tag))
    for stage in backbone_stages(config):
        bb = config[stage]["model"]["backbone"]
        if bb["weights"] == "imagenet" and bb["arch"] != "tiny":
            key = f"{stage}.model.backbone.weights"
            out.append(Pretrained(key, "torchvision", bb["arch"], TORCHVISION_TAG))
    return out
