from pathlib import Path

from qaclims.data.manifest import read_classes
from qaclims.evaluation import eval_labels as evaluate
from qaclims.workflow.smk import job

with job(snakemake):
    evaluate.run_labels(
        manifest=Path(snakemake.input.manifest),
        pred_dirs=[Path(d) for d in snakemake.input.preds],
        classes=read_classes(snakemake.input.classes),
        out_summary=Path(snakemake.output.summary),
        out_per_class=Path(snakemake.output.per_class),
        ignore_pred_255=snakemake.params.mode,
        split=snakemake.wildcards.split,
        workers=snakemake.threads,
    )
