from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.data.manifest import read_classes
from qaclims.qape import vqa
from qaclims.workflow.smk import job

with job(snakemake) as j:
    for kind in ("fg", "bg"):  # one job per shard: the model loads once for both kinds
        vqa.run(
            manifest=Path(snakemake.input.manifest),
            classes=read_classes(snakemake.input.classes),
            cfg=from_mapping(vqa.VqaConfig, snakemake.config["vqa"], "vqa"),
            kind=kind,
            out=Path(snakemake.output[kind]),
            shard=int(snakemake.wildcards.shard),
            num_shards=snakemake.params.num_shards,
            device=j.device,
            cache_dir=Path(snakemake.params.cache),
        )
