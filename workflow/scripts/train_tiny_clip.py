from pathlib import Path

from qaclims import clip_models
from qaclims.config import from_mapping
from qaclims.smk import job

with job(snakemake) as j:
    root = Path(snakemake.input.root)
    clip_models.train_tiny_clip(
        root=root,
        captions=root / "captions.parquet",
        clip_cfg=from_mapping(clip_models.ClipConfig, snakemake.params.clip, "clip"),
        cfg=from_mapping(clip_models.TinyClipConfig, snakemake.params.cfg, "train_tiny_clip"),
        out=Path(snakemake.output.model),
        device=j.device,
    )
