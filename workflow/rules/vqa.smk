# QAPE: ask a VQA model about every (image, present class), then build the fg/bg corpus.


rule train_tiny_blip:
    input:
        root=R("synthetic"),
    output:
        model=directory(R("train_tiny_blip")),
    log:
        LOG("train_tiny_blip.log"),
    benchmark:
        BENCH("train_tiny_blip.tsv")
    conda:
        "../../envs/vqa.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=1,
    params:
        code=code("train_tiny_blip"),
        torch_threads=config["threads"]["train_torch"],
        cfg=result_cfg("train_tiny_blip"),
        resume=RESUME("train_tiny_blip", "state.pt"),
    script:
        "../scripts/train_tiny_blip.py"


rule vqa:
    input:
        **vqa_inputs(None),
        manifest=manifest(SPLITS["train"]),
        classes=R("data", "classes.json"),
    output:
        fg=R("vqa", "fg", "{shard}.parquet"),
        bg=R("vqa", "bg", "{shard}.parquet"),
    log:
        LOG("vqa", "{shard}.log"),
    benchmark:
        BENCH("vqa", "{shard}.tsv")
    conda:
        "../../envs/vqa.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=1 if config["vqa"]["backend"] == "blip" else 0,
    params:
        code=code("vqa"),
        cfg=result_cfg("vqa"),
        num_shards=SHARDS,
        cache=R(".cache", "vqa"),
    script:
        "../scripts/vqa.py"


rule corpus:
    input:
        answers=expand(
            R("vqa", "{kind}", "{shard}.parquet"),
            kind=["fg", "bg"],
            shard=shard_ids(),
        ),
        classes=R("data", "classes.json"),
    output:
        corpus=R("corpus", "corpus.parquet"),
        stats=R("corpus", "stats.parquet"),
    log:
        LOG("corpus.log"),
    conda:
        "../../envs/vqa.yaml"
    threads: 1
    params:
        code=code("corpus"),
        cfg=result_cfg("corpus"),
        lemmatised=answers_lemmatised(),
    script:
        "../scripts/corpus.py"
