# Multi-GPU: one job holding its GPUs, torchrun started once (qaclims.launch).
from qaclims import launch, train_ritc
from qaclims.smk import job

with job(snakemake, gpus=False) as j:
    status = launch.run(
        train_ritc,
        gpus=int(snakemake.resources.gpu),
        job=launch.job_args(snakemake, resume=snakemake.params.resume),
        log_path=snakemake.log[0],
        tag=j.tag,
    )
if status != 0:
    raise SystemExit(f"train_ritc failed with exit status {status}; see {snakemake.log[0]}")
