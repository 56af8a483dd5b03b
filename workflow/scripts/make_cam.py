from pathlib import Path

from qaclims.cam import make_cam as cam_infer
from qaclims.core.config import from_mapping
from qaclims.data.manifest import read_classes
from qaclims.models.cam_resnet import CamModelConfig
from qaclims.workflow.smk import job

with job(snakemake) as j:
    cam_infer.run(
        manifest=Path(snakemake.input.manifest),
        weights=Path(snakemake.input.weights),
        model_cfg=from_mapping(CamModelConfig, snakemake.params.model, "train_cam.model"),
        num_classes=len(read_classes(snakemake.input.classes)),
        cfg=from_mapping(cam_infer.MakeCamConfig, snakemake.config["make_cam"], "make_cam"),
        out_dir=Path(snakemake.output.cams),
        shard=int(snakemake.wildcards.shard),
        num_shards=snakemake.params.num_shards,
        device=j.device,
    )
