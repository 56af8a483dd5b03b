# One job in a worker process (one per GPU under torchrun): qaclims.workflow.launch.
from qaclims.ritc import train_ritc
from qaclims.workflow import launch

launch.run_rule(snakemake, train_ritc)
