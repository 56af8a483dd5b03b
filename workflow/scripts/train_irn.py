# One job in a worker process (one per GPU under torchrun): qaclims.workflow.launch.
from qaclims.refine import train_irn
from qaclims.workflow import launch

launch.run_rule(snakemake, train_irn)
