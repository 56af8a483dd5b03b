from qaclims.core.config import from_mapping
from qaclims.data import synthetic
from qaclims.workflow.smk import job

with job(snakemake):
    cfg = from_mapping(synthetic.SyntheticConfig, snakemake.config["synthetic"], "synthetic")
    synthetic.run(snakemake.output.root, cfg)
