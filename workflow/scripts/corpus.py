from pathlib import Path

from qaclims import corpus
from qaclims.config import from_mapping
from qaclims.datasets.base import read_classes
from qaclims.smk import job

with job(snakemake):
    corpus.run(
        answer_tables=[Path(p) for p in snakemake.input.answers],
        classes=read_classes(snakemake.input.classes),
        cfg=from_mapping(corpus.CorpusConfig, snakemake.config["corpus"], "corpus"),
        out_corpus=Path(snakemake.output.corpus),
        out_stats=Path(snakemake.output.stats),
        lemmatised=snakemake.params.lemmatised,
    )
