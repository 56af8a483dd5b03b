from qaclims import synthetic
from qaclims.config import from_mapping
from qaclims.smk import job

with job(snakemake):
    cfg = from_mapping(synthetic.SyntheticConfig, snakemake.config["synthetic"], "synthetic")
    synthetic.run(snakemake.output.root, cfg)
