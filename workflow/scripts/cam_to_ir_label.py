from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.refine import cam_to_ir_label
from qaclims.workflow.smk import job

with job(snakemake) as j:
    cam_to_ir_label.run(
        manifest=Path(snakemake.input.manifest),
        cam_dirs=[Path(snakemake.input.cams)],  # make_cam's shard of the same images
        cfg=from_mapping(
            cam_to_ir_label.IrLabelConfig, snakemake.config["cam_to_ir_label"], "cam_to_ir_label"
        ),
        out_dir=Path(snakemake.output.labels),
        shard=int(snakemake.wildcards.shard),
        num_shards=snakemake.params.num_shards,
        threads=j.threads,
    )
