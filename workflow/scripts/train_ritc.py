# Multi-GPU: one job holding its GPUs, torchrun started once (qaclims.workflow.launch).
from qaclims.ritc import train_ritc
from qaclims.workflow import launch

launch.run_rule(snakemake, train_ritc)
