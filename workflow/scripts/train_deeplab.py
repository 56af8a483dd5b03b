# Multi-GPU: one job holding its GPUs, torchrun started once (qaclims.launch).
from qaclims import deeplab, launch

launch.run_rule(snakemake, deeplab)
