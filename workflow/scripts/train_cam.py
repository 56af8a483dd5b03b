# One job in a worker process (one per GPU under torchrun): qaclims.workflow.launch.
from qaclims.cam import train_cam
from qaclims.workflow import launch

launch.run_rule(snakemake, train_cam)
