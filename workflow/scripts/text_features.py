from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.data.manifest import read_classes
from qaclims.models import clip as clip_models
from qaclims.ritc import text_features as clip_text
from qaclims.workflow.smk import job

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
