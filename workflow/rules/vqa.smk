# QAPE: ask a VQA model about every (image, present class), then build the fg/bg corpus.


rule vqa:
    input:
        unpack(vqa_inputs),
        manifest=manifest(SPLITS["train"]),
        classes=R("data", "classes.json"),
        code=code("vqa"),
    output:
        answers=R("vqa", "{kind}", "{shard}.parquet"),
    log:
        LOG("vqa", "{kind}_{shard}.log"),
    benchmark:
        BENCH("vqa", "{kind}_{shard}.tsv")
    wildcard_constraints:
        kind="fg|bg",
    conda:
        "../../envs/vqa.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=1 if config["vqa"]["backend"] == "blip" else 0,
    params:
        cfg=result_cfg("vqa"),
        shard=lambda wc: int(wc.shard),
        num_shards=SHARDS["vqa"],
        cache=R(".cache", "vqa"),
    script:
        "../scripts/vqa.py"


rule corpus:
    input:
        answers=expand(
            R("vqa", "{kind}", "{shard}.parquet"),
            kind=["fg", "bg"],
            shard=shard_ids("vqa"),
        ),
        classes=R("data", "classes.json"),
        code=code("corpus"),
    output:
        corpus=R("corpus", "corpus.parquet"),
        stats=R("corpus", "stats.parquet"),
    log:
        LOG("corpus.log"),
    conda:
        "../../envs/vqa.yaml"
    threads: 1
    params:
        cfg=result_cfg("corpus"),
    script:
        "../scripts/corpus.py"
