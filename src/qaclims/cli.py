"""Entry point of the multi-GPU training stages under torchrun.

``python -m qaclims.cli STAGE ARGS_JSON`` where ARGS_JSON holds the job's paths, its config
slice(s) and the device setting (the workflow builds it; see ``workflow/rules/*.smk``).
Started once per GPU by :mod:`qaclims.launch`; rank 0 writes the outputs and the log.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qaclims import devices, logs
from qaclims.config import from_mapping


def _train_deeplab(a: dict[str, Any], device: str) -> None:
    from qaclims import deeplab
    from qaclims.datasets.base import read_classes

    deeplab.train_run(
        manifest=Path(a["manifest"]),
        pseudo_dirs=[Path(p) for p in a["pseudo_dirs"]],
        num_classes=len(read_classes(a["classes"])) + 1,
        cfg=from_mapping(deeplab.TrainDeeplabConfig, a["cfg"], "train_deeplab"),
        out_model=Path(a["model"]),
        out_history=Path(a["history"]),
        device=device,
        resume_path=Path(a["resume"]),
    )


def _train_ritc(a: dict[str, Any], device: str) -> None:
    from qaclims import clip_models, train_ritc
    from qaclims.datasets.base import read_classes
    from qaclims.models.cam_resnet import CamModelConfig

    train_ritc.run(
        manifest=Path(a["manifest"]),
        num_classes=len(read_classes(a["classes"])),
        cam_weights=Path(a["cam_weights"]),
        model_cfg=from_mapping(CamModelConfig, a["model_cfg"], "train_cam.model"),
        corpus_index=Path(a["corpus_index"]),
        text_features=Path(a["text_features"]),
        clip_cfg=from_mapping(clip_models.ClipConfig, a["clip_cfg"], "clip"),
        clip_weights=Path(a["clip_weights"]) if a.get("clip_weights") else None,
        cfg=from_mapping(train_ritc.TrainRitcConfig, a["cfg"], "train_ritc"),
        out_model=Path(a["model"]),
        out_history=Path(a["history"]),
        device=device,
        resume_path=Path(a["resume"]),
    )


STAGES: dict[str, Callable[[dict[str, Any], str], None]] = {
    "train_deeplab": _train_deeplab,
    "train_ritc": _train_ritc,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in STAGES:
        print(f"usage: python -m qaclims.cli {{{','.join(STAGES)}}} ARGS_JSON", file=sys.stderr)
        return 2
    a = json.loads(args[1])
    rank = int(os.environ.get("RANK", "0"))
    # stderr only: the rule appends it to its log (so tracebacks before this line land there too)
    log = logs.setup(None, logging.INFO if rank == 0 else logging.WARNING)
    device = devices.torch_device(a.get("device", "auto"))
    world = os.environ.get("WORLD_SIZE", "1")
    log.info("rule %s on %s (rank %d of %s)", args[0], device, rank, world)
    try:
        STAGES[args[0]](a, device)
    except Exception:
        log.exception("stage %s failed", args[0])
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
