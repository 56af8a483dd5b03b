from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.models import irn as irn_model
from qaclims.refine import make_sem_seg
from qaclims.workflow.smk import job

with job(snakemake) as j:
    make_sem_seg.run(
        manifest=Path(snakemake.input.manifest),
        cam_dirs=[Path(snakemake.input.cams)],  # make_cam's shard of the same images
        irn_weights=Path(snakemake.input.irn),
        irn_cfg=from_mapping(irn_model.IrnModelConfig, snakemake.params.irn, "train_irn.model"),
        cfg=from_mapping(
            make_sem_seg.SemSegConfig, snakemake.config["make_sem_seg"], "make_sem_seg"
        ),
        out_dir=Path(snakemake.output.masks),
        shard=int(snakemake.wildcards.shard),
        num_shards=snakemake.params.num_shards,
        device=j.device,
    )
