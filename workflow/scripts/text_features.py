from pathlib import Path

from qaclims import clip_models, clip_text
from qaclims.config import from_mapping
from qaclims.datasets.base import read_classes
from qaclims.smk import job

with job(snakemake) as j:
    weights = snakemake.input.get("clip_weights")
    clip_text.run(
        corpus=Path(snakemake.input.corpus),
        classes=read_classes(snakemake.input.classes),
        clip_cfg=from_mapping(clip_models.ClipConfig, snakemake.config["clip"], "clip"),
        cfg=from_mapping(
            clip_text.TextFeatureConfig, snakemake.config["text_features"], "text_features"
        ),
        out_features=Path(snakemake.output.features),
        out_index=Path(snakemake.output.index),
        device=j.device,
        clip_weights=Path(weights) if weights else None,
    )
