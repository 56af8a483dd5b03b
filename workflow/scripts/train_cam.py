from pathlib import Path

from qaclims.cam import train_cam
from qaclims.core.config import from_mapping
from qaclims.data.manifest import read_classes
from qaclims.workflow.smk import job

with job(snakemake) as j:
    train_cam.run(
        manifest=Path(snakemake.input.manifest),
        num_classes=len(read_classes(snakemake.input.classes)),
        out_model=Path(snakemake.output.model),
        out_history=Path(snakemake.output.history),
        cfg=from_mapping(train_cam.TrainCamConfig, snakemake.config["train_cam"], "train_cam"),
        device=j.device,
        resume_path=Path(snakemake.params.resume),
    )
