from pathlib import Path

from qaclims import vqa
from qaclims.config import from_mapping
from qaclims.datasets.base import read_classes
from qaclims.smk import job

with job(snakemake) as j:
    vqa.run(
        manifest=Path(snakemake.input.manifest),
        classes=read_classes(snakemake.input.classes),
        cfg=from_mapping(vqa.VqaConfig, snakemake.config["vqa"], "vqa"),
        kind=snakemake.wildcards.kind,
        out=Path(snakemake.output.answers),
        shard=snakemake.params.shard,
        num_shards=snakemake.params.num_shards,
        device=j.device,
        cache_dir=Path(snakemake.params.cache),
    )
