# The resolved config of this run, as every job sees it (schema defaults + config files).
from qaclims.core import io
from qaclims.workflow.smk import job

with job(snakemake):
    io.write_yaml(snakemake.output.config, dict(snakemake.config))
