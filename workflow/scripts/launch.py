# Multi-GPU training stages: one job, torchrun started once with a worker per GPU held.
import json

from qaclims import launch

status = launch.run(
    stage=snakemake.rule,
    gpus=int(snakemake.resources.gpu),
    args_json=json.dumps(snakemake.params.args),
    log_path=snakemake.log[0],
)
if status != 0:
    raise SystemExit(f"{snakemake.rule} failed with exit status {status}; see {snakemake.log[0]}")
