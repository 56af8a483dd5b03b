from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.data.manifest import read_classes
from qaclims.models import released
from qaclims.models.deeplab import DeeplabModelConfig
from qaclims.workflow.smk import job

with job(snakemake):
    released.run_deeplab(
        path=Path(snakemake.input.pth),
        cfg=from_mapping(DeeplabModelConfig, snakemake.params.model, "train_deeplab.model"),
        num_classes=len(read_classes(snakemake.input.classes)) + 1,
        out_model=Path(snakemake.output.model),
        out_history=Path(snakemake.output.history),
    )
