from pathlib import Path

from qaclims.cam import eval_cam
from qaclims.core.config import from_mapping
from qaclims.data.manifest import read_classes
from qaclims.workflow.smk import job

with job(snakemake):
    eval_cam.run(
        manifest=Path(snakemake.input.manifest),
        cam_dirs=[Path(d) for d in snakemake.input.cams],
        classes=read_classes(snakemake.input.classes),
        cfg=from_mapping(eval_cam.EvalCamConfig, snakemake.config["eval_cam"], "eval_cam"),
        out_summary=Path(snakemake.output.summary),
        out_per_class=Path(snakemake.output.per_class),
        out_sweep=Path(snakemake.output.sweep),
        split=snakemake.wildcards.split,
        workers=snakemake.threads,
    )
