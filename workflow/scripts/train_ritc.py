# Multi-GPU: one job holding its GPUs, torchrun started once (qaclims.launch).
from qaclims import launch, train_ritc

launch.run_rule(snakemake, train_ritc)
