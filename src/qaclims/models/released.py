"""The authors' released CAM networks as inputs: ``res50_cam.pth`` (the baseline CAM
network) and ``res50_qa_clims.pth`` (the QA-CLIMS network).

Both are plain ``state_dict`` files of IRN's ``resnet50_cam.Net`` / QA-CLIMS's
``resnet50_clims.Net``: a torchvision-style ResNet-50 under ``resnet50.`` (``conv1``,
``bn1``, ``layer1``-``layer4``, maybe ``fc``), the same modules again under the aliases
``stage1``-``stage4``, ``backbone`` and ``newly_added`` (``nn.Sequential`` / ``ModuleList``
views of them), and ``classifier.weight`` (``C x 2048 x 1 x 1``, no bias). A ``module.``
prefix (a DDP save) is dropped.

:func:`convert` maps those keys to :class:`~qaclims.models.cam_resnet.CamNet`'s, checks
that every key of the network is given with its shape and that nothing unknown is left
(an error lists the missing and unexpected keys, naming the file), and :func:`run` writes
the network in the project's format, so make_cam, eval_cam, the refinement and DeepLab
run from it in place of ``train_cam`` / ``train_ritc``. Files are read with
``torch.load(weights_only=True)``: tensors only, no pickled code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
import torch

from qaclims.artifacts.weights import check_fit, read_pth_state
from qaclims.core.io import write_parquet
from qaclims.models.cam_resnet import CamModelConfig, CamNet
from qaclims.models.deeplab import DeeplabModelConfig
from qaclims.training import save_weights

log = logging.getLogger(__name__)

#: reference prefix -> CamNet prefix (the canonical copy of every tensor)
PREFIXES: tuple[tuple[str, str], ...] = (
    ("resnet50.conv1.", "backbone.stages.0.0."),
    ("resnet50.bn1.", "backbone.stages.0.1."),
    ("resnet50.layer1.", "backbone.stages.0.4."),
    ("resnet50.layer2.", "backbone.stages.1."),
    ("resnet50.layer3.", "backbone.stages.2."),
    ("resnet50.layer4.", "backbone.stages.3."),
    ("classifier.", "classifier."),
)
#: prefixes of the reference's aliases of the same tensors, and of its unused fc layer
ALIASES: tuple[str, ...] = ("stage1.", "stage2.", "stage3.", "stage4.", "backbone.",
                            "newly_added.", "resnet50.fc.")  # fmt: skip


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a released ``.pth`` state dict (``weights_only=True``); errors name
    the file (:func:`qaclims.artifacts.weights.read_pth_state`)."""
    return read_pth_state(path, "released model")


def map_strict(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    rename: Callable[[str], str | None],
    where: str,
    network: str,
) -> dict[str, torch.Tensor]:
    """``state`` under ``target``'s keys, every key accounted for.

    ``rename`` maps a file key to a target key, or None for a key to drop silently
    (an alias). Raises :class:`DataError` naming ``where`` and ``network`` with the missing
    keys (target keys nothing maps to; ``num_batches_tracked`` may be absent), the
    unexpected keys (renamed to no target key) and shape mismatches.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = rename(key)
        if new is not None:  # a key renamed to no target key is reported under its own name
            out[new if new in target else key] = value
    check_fit(out, target, where, "released model", network)
    for k in target:
        out.setdefault(k, target[k].clone())  # num_batches_tracked (unused in eval)
    return {k: out[k].to(target[k].dtype) for k in target}


def _cam_key(key: str) -> str | None:
    new = next((t + key[len(r) :] for r, t in PREFIXES if key.startswith(r)), None)
    if new is None and key.startswith(ALIASES):
        return None
    return new if new is not None else "<unmapped>" + key


def convert(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """The reference's ``state`` under ``target``'s keys (a CamNet ``state_dict``).

    Raises :class:`DataError` naming ``where`` with the missing keys (target keys nothing
    maps to; ``num_batches_tracked`` may be absent), the unexpected keys (neither mapped
    nor a known alias) and shape mismatches.
    """
    return map_strict(state, target, _cam_key, where, "CAM network")


def load(path: Path, cfg: CamModelConfig, num_classes: int) -> CamNet:
    """The released network at ``path`` as a :class:`CamNet` of ``cfg`` (weights: none
    needed, every tensor comes from the file)."""
    import dataclasses

    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, weights="none"))
    net = CamNet(cfg, num_classes)
    net.load_state_dict(convert(read_state(Path(path)), net.state_dict(), str(path)))
    return net.eval()


def run(
    path: Path, cfg: CamModelConfig, num_classes: int, out_model: Path, out_history: Path
) -> None:
    """Write the released network at ``path`` as ``out_model`` (the project's safetensors
    format) and an empty training history ``out_history`` (nothing was trained here)."""
    net = load(path, cfg, num_classes)
    save_weights(out_model, net)
    write_parquet(out_history, pd.DataFrame({"step": pd.Series([], dtype="int64")}))
    log.info("released model %s -> %s (%d tensors)", path, out_model, len(net.state_dict()))


def run_deeplab(
    path: Path, cfg: DeeplabModelConfig, num_classes: int, out_model: Path, out_history: Path
) -> None:
    """Write a trained deeplab-pytorch ``DeepLabV2_ResNet101_MSC`` checkpoint (``base.`` +
    ``layer1``-``layer5`` + ``aspp.c0``-``c3``, e.g. CLIMS's ``checkpoint_30000.pth``) as
    ``out_model`` in :func:`qaclims.seg.train_deeplab.train_run`'s format, with an empty history,
    so infer_deeplab and eval_deeplab run from it. ``cfg`` (``train_deeplab.model``) must
    describe the same network in the Caffe layout; every tensor must fit (strict)."""
    import dataclasses
    import json

    from qaclims.core.config import to_dict
    from qaclims.core.errors import ConfigError
    from qaclims.models.deeplab import build_model, deeplab_pytorch_model_key

    if cfg.style != "caffe" or cfg.version != "v2":
        raise ConfigError(
            "released.deeplab: a deeplab-pytorch checkpoint is a DeepLab-v2 in the Caffe layout; "
            f"set train_deeplab.model.version: v2 and style: caffe (got {cfg.version}, "
            f"{cfg.style})"
        )
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, weights="none"))
    net = build_model(cfg, num_classes, init=False)
    state = map_strict(
        read_state(Path(path)),
        net.state_dict(),
        lambda k: deeplab_pytorch_model_key(k) or "<unmapped>" + k,
        str(path),
        f"train_deeplab.model network with {num_classes} classes",
    )
    net.load_state_dict(state)
    meta = {"num_classes": str(num_classes), "model": json.dumps(to_dict(cfg))}
    save_weights(out_model, net, metadata=meta)
    write_parquet(out_history, pd.DataFrame({"step": pd.Series([], dtype="int64")}))
    log.info("released DeepLab %s -> %s (%d tensors)", path, out_model, len(state))
