from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.data.manifest import read_classes
from qaclims.models.deeplab import DeeplabModelConfig
from qaclims.seg import infer_deeplab
from qaclims.workflow.smk import job

with job(snakemake) as j:
    cfg = from_mapping(
        infer_deeplab.InferDeeplabConfig, snakemake.config["infer_deeplab"], "infer_deeplab"
    )
    crf_dir = Path(snakemake.output.crf)
    if not cfg.crf.enabled:  # the folder is still a declared output: leave it empty
        crf_dir.mkdir(parents=True, exist_ok=True)
    infer_deeplab.infer_run(
        manifest=Path(snakemake.input.manifest),
        weights=Path(snakemake.input.weights),
        model_cfg=from_mapping(DeeplabModelConfig, snakemake.params.model, "train_deeplab.model"),
        num_classes=len(read_classes(snakemake.input.classes)) + 1,
        cfg=cfg,
        out_dir_nocrf=Path(snakemake.output.nocrf),
        out_dir_crf=crf_dir if cfg.crf.enabled else None,
        shard=int(snakemake.wildcards.shard),
        num_shards=snakemake.params.num_shards,
        device=j.device,
    )
