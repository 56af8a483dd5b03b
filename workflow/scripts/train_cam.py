# One job in a worker process (one per GPU under torchrun): qaclims.workflow.launch.
from qaclims.workflow import launch

launch.run_rule(snakemake, "qaclims.cam.train_cam")
