from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.data.manifest import read_classes
from qaclims.models import released
from qaclims.models.cam_resnet import CamModelConfig
from qaclims.workflow.smk import job

with job(snakemake):
    released.run(
        path=Path(snakemake.input.pth),
        cfg=from_mapping(CamModelConfig, snakemake.params.model, "train_cam.model"),
        num_classes=len(read_classes(snakemake.input.classes)),
        out_model=Path(snakemake.output.model),
        out_history=Path(snakemake.output.history),
    )
