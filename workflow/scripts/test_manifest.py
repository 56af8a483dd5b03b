from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.data import dataset as datasets
from qaclims.workflow.smk import job

with job(snakemake):
    cfg = dict(snakemake.config["dataset"], root=snakemake.params.root)
    cfg = from_mapping(datasets.DatasetConfig, cfg, "dataset")
    datasets.run_unlabelled(
        cfg, snakemake.config["splits"]["test"], Path(snakemake.output.manifest)
    )
