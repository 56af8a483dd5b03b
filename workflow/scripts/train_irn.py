from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.refine import train_irn
from qaclims.workflow.smk import job

with job(snakemake) as j:
    train_irn.run_train(
        manifest=Path(snakemake.input.manifest),
        ir_label_dirs=[Path(d) for d in snakemake.input.labels],
        cfg=from_mapping(train_irn.TrainIrnConfig, snakemake.config["train_irn"], "train_irn"),
        out_model=Path(snakemake.output.model),
        out_history=Path(snakemake.output.history),
        device=j.device,
        resume_path=Path(snakemake.params.resume),
    )
