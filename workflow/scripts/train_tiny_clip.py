from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.models.clip import ClipConfig
from qaclims.ritc import train_tiny_clip as tiny
from qaclims.workflow.smk import job

with job(snakemake) as j:
    root = Path(snakemake.input.root)
    tiny.train_tiny_clip(
        root=root,
        captions=root / "captions.parquet",
        clip_cfg=from_mapping(ClipConfig, snakemake.config["clip"], "clip"),
        cfg=from_mapping(
            tiny.TinyClipConfig, snakemake.config["train_tiny_clip"], "train_tiny_clip"
        ),
        out=Path(snakemake.output.model),
        device=j.device,
        resume_path=Path(snakemake.params.resume),
    )
