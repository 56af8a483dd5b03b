from pathlib import Path

from qaclims.report import build as report_build
from qaclims.workflow.smk import job

with job(snakemake):
    report_build.write_overlay_sample(
        manifest=Path(snakemake.input.manifest),
        dirs=[Path(d) for d in snakemake.input.dirs],
        kind=snakemake.params.kind,
        num=snakemake.params.num,
        out=Path(snakemake.output[0]),
    )
