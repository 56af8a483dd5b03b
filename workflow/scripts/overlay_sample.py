from pathlib import Path

from qaclims.report import overlay
from qaclims.workflow.smk import job

with job(snakemake):
    overlay.write_overlay_sample(
        manifest=Path(snakemake.input.manifest),
        dirs=[Path(d) for d in snakemake.input.dirs],
        kind=snakemake.params.kind,
        out=Path(snakemake.output[0]),
    )
