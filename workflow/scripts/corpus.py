from pathlib import Path

from qaclims.core.config import from_mapping
from qaclims.data.manifest import read_classes
from qaclims.qape import corpus
from qaclims.workflow.smk import job

with job(snakemake):
    corpus.run(
        answer_tables=[Path(p) for p in snakemake.input.answers],
        classes=read_classes(snakemake.input.classes),
        cfg=from_mapping(corpus.CorpusConfig, snakemake.config["corpus"], "corpus"),
        out_corpus=Path(snakemake.output.corpus),
        out_stats=Path(snakemake.output.stats),
        lemmatised=snakemake.params.lemmatised,
    )
