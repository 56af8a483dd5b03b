# One job in a worker process (one per GPU under torchrun): qaclims.workflow.launch.
from qaclims.seg import train_deeplab
from qaclims.workflow import launch

launch.run_rule(snakemake, train_deeplab)
