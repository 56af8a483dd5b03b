from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.models import clip as clip_models
from qaclims.workflow.smk import job

with job(snakemake) as j:
    root = Path(snakemake.input.root)
    clip_models.train_tiny_clip(
        root=root,
        captions=root / "captions.parquet",
        clip_cfg=from_mapping(clip_models.ClipConfig, snakemake.config["clip"], "clip"),
        cfg=from_mapping(
            clip_models.TinyClipConfig, snakemake.config["train_tiny_clip"], "train_tiny_clip"
        ),
        out=Path(snakemake.output.model),
        device=j.device,
    )
