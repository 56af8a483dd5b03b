"""The pretrained models a run downloads, where they are cached, and fetching them.

A config names three kinds of downloaded weights: a transformers hub name (``vqa.model``,
BLIP), an open_clip model and pretrained tag (``clip.name`` / ``clip.pretrained``) and
torchvision's ImageNet weights (``<stage>.model.backbone.weights: imagenet``). Each library
downloads into its own cache on first use: the Hugging Face cache (``HF_HUB_CACHE``,
``HF_HOME``; open_clip's hub-hosted weights too) and torch hub's (``TORCH_HOME``). On a
cluster whose compute nodes cannot reach the internet those downloads fail inside a job,
possibly hours after submission. So:

- :func:`needed`: what a resolved config makes the workflow download (only what its planned
  DAG loads, as :func:`qaclims.workflow.preflight.check_paths` decides for files);
- :func:`locate`: where each is in this machine's caches, or ``None``;
- :func:`fetch`: download one into the cache its job will read, through the same library
  call the job makes;
- ``python -m qaclims.models.pretrained [--fetch] [--configfile FILE ...]``: the table of
  what a run needs and where it is (exit status 1 while anything is missing), and with
  ``--fetch`` downloads what is missing (run it on a machine that has internet and shares
  the caches, e.g. a cluster's login node).

With ``HF_HUB_OFFLINE`` set, the workflow checks at parse time that everything is cached
(:func:`qaclims.workflow.preflight.check_pretrained`).

Standard library only at import time (the Snakefile imports it through the preflight).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from qaclims.core.errors import ConfigError

Source = Literal["transformers", "open_clip", "torchvision"]
TORCHVISION_TAG = "IMAGENET1K_V1"  # what backbone.weights: imagenet loads
HF_CONFIG_FILES = ("config.json",)
# the processor's settings: transformers 5 writes processor_config.json, older repositories
# (BLIP's on the hub) hold preprocessor_config.json
HF_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


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


def _hf_cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename)
    return Path(hit) if isinstance(hit, str) else None


def open_clip_files(name: str, tag: str) -> tuple[str, list[str]] | tuple[None, list[Path]]:
    """``(hub repo, file names in lookup order)`` of an open_clip weight on the hub, or
    ``(None, [local path])`` for one open_clip downloads from a URL."""
    import open_clip
    from open_clip import pretrained as ocp

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise ConfigError(
            f"config key clip.pretrained: {tag!r} is not a pretrained tag of {name} "
            f"({open_clip.list_pretrained_tags_by_model(name)})"
        )
    hub = cfg.get("hf_hub", "")
    if hub and ocp.has_hf_hub():
        repo, filename = os.path.split(hub)
        filename = filename or ocp.HF_WEIGHTS_NAME
        return repo, [*ocp._get_safe_alternatives(filename), filename]
    return None, [Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])]


def torchvision_file(arch: str, tag: str) -> Path:
    """Where torch hub keeps torchvision's ``arch`` weights ``tag`` (what
    ``load_state_dict_from_url`` reads and downloads to)."""
    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(arch)[tag]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def locate(p: Pretrained) -> Path | None:
    """The cached file (transformers: the snapshot folder) a job would load ``p`` from, or
    ``None`` when this machine's cache lacks it. Imports the library of ``p.source``."""
    if p.source == "transformers":
        if not all(_hf_cached(p.name, f) for f in HF_CONFIG_FILES):
            return None
        if not any(_hf_cached(p.name, f) for f in HF_PROCESSOR_FILES):
            return None
        for f in HF_WEIGHT_FILES:
            hit = _hf_cached(p.name, f)
            if hit is not None:
                return hit.parent
        return None
    if p.source == "open_clip":
        repo, files = open_clip_files(p.name, p.tag)
        if repo is None:
            return next((Path(f) for f in files if Path(f).is_file()), None)
        return next((h for f in files if (h := _hf_cached(repo, str(f))) is not None), None)
    path = torchvision_file(p.name, p.tag)
    return path if path.is_file() else None


def fetch(p: Pretrained) -> Path:
    """Download ``p`` into the cache its job reads, by the library call the job makes
    (transformers' ``from_pretrained`` of the processor and the model, open_clip's
    ``download_pretrained``, torchvision's ``get_state_dict``); returns :func:`locate`'s
    path. Needs internet access (or a reachable hub mirror, ``HF_ENDPOINT``)."""
    if p.source == "transformers":
        from transformers import BlipForQuestionAnswering, BlipProcessor

        BlipProcessor.from_pretrained(p.name)
        BlipForQuestionAnswering.from_pretrained(p.name, weights_only=True)
    elif p.source == "open_clip":
        import open_clip

        open_clip.download_pretrained(open_clip.get_pretrained_cfg(p.name, p.tag))
    else:
        import torchvision

        torchvision.models.get_model_weights(p.name)[p.tag].get_state_dict(progress=True)
    where = locate(p)
    if where is None:
        raise RuntimeError(
            f"{p.key}: {p.what} was downloaded but is not where the jobs look for it "
            "(HF_HOME / HF_HUB_CACHE / TORCH_HOME differ between the two?)"
        )
    return where


def missing(config: Mapping[str, Any]) -> list[Pretrained]:
    """The entries of :func:`needed` that :func:`locate` does not find."""
    return [p for p in needed(config) if locate(p) is None]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m qaclims.models.pretrained",
        description="List (and with --fetch download) the pretrained models a run downloads.",
    )
    ap.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        help="the run's config files, as given to snakemake (default: the demo's)",
    )
    ap.add_argument("--fetch", action="store_true", help="download what is not cached")
    args = ap.parse_args(argv)
    from qaclims.report.gpu_hours import load_config
    from qaclims.workflow import experiments

    root = Path(__file__).resolve().parents[3]
    config = load_config(args.configfile or [root / "config" / "config.yaml"])
    configs = [config] + [
        experiments.cell_config(config, c.variant, c.seed) for c in experiments.cells(config)
    ]
    seen: dict[tuple[str, str, str], list[Pretrained]] = {}
    for cfg in configs:
        for p in needed(cfg):
            same = seen.setdefault((p.source, p.name, p.tag), [])
            if p.key not in [k.key for k in same]:
                same.append(p)
    if not seen:
        print("this run downloads no pretrained model")
        return 0
    if args.fetch and offline():
        print("HF_HUB_OFFLINE is set: the hub's models cannot be downloaded (unset it to fetch)")
    lacking = 0
    for same in seen.values():
        p, keys = same[0], ", ".join(k.key for k in same)  # one model, every key naming it
        where = locate(p)
        if where is None and args.fetch:
            print(f"{keys}: {p.what}: downloading ...", flush=True)
            try:
                where = fetch(p)
            except Exception as e:  # no network, no such model, a full disk: say which
                print(f"{keys}: {p.what}: download failed: {type(e).__name__}: {e}")
        lacking += where is None
        print(f"{keys}: {p.what}: {where if where is not None else 'NOT CACHED'}")
    if lacking:
        print(f"{lacking} not cached: run again with --fetch where the internet is reachable")
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main())
