# Multi-GPU: one job holding its GPUs, torchrun started once (qaclims.workflow.launch).
from qaclims.seg import train_deeplab
from qaclims.workflow import launch

launch.run_rule(snakemake, train_deeplab)
