# The resolved config of this run, as every job sees it (schema defaults + config files).
from qaclims import io
from qaclims.smk import job

with job(snakemake):
    io.write_yaml(snakemake.output.config, dict(snakemake.config))
