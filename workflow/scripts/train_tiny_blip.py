# One job in a worker process (one per GPU under torchrun): qaclims.workflow.launch.
from qaclims.qape import train_tiny_blip
from qaclims.workflow import launch

launch.run_rule(snakemake, train_tiny_blip)
