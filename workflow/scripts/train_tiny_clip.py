from pathlib import Path

from qaclims import clip_models
from qaclims.config import from_mapping
from qaclims.smk import job

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
