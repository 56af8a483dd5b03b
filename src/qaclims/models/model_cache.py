"""Where this machine's caches hold the pretrained models a run downloads, and fetching
them (the models: :func:`qaclims.models.pretrained.needed`).

- :func:`locate`: the cached file a job would load (transformers: the snapshot folder), or
  ``None``: the Hugging Face hub cache (``HF_HUB_CACHE``, ``HF_HOME``) for BLIP and for
  open_clip's hub-hosted weights, open_clip's URL cache, torch hub's (``TORCH_HOME``) for
  torchvision;
- :func:`fetch`: download one into the cache its job reads, by the library call the job
  makes.

Standard library at import; each function imports the library of its model's source.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from qaclims.core.errors import ConfigError
from qaclims.models.pretrained import Pretrained

HF_CONFIG_FILES = ("config.json",)
# the processor's settings: transformers 5 writes processor_config.json, older repositories
# (BLIP's on the hub) hold preprocessor_config.json
HF_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


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
