from pathlib import Path

from qaclims.data.manifest import read_classes
from qaclims.seg import submission
from qaclims.workflow.smk import job

with job(snakemake):
    submission.run(
        manifest=Path(snakemake.input.manifest),
        pred_dirs=[Path(d) for d in snakemake.input.preds],
        out_tar=Path(snakemake.output.archive),
        out_summary=Path(snakemake.output.summary),
        num_classes=len(read_classes(snakemake.input.classes)) + 1,
        variant=snakemake.params.variant,
        competition=snakemake.params.competition,
    )
