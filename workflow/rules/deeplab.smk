# Segmentation network trained on the pseudo masks, multi-scale (+CRF) inference, scoring.


rule train_deeplab:
    input:
        manifest=manifest(SPLITS["train"]),
        classes=R("data", "classes.json"),
        pseudo=pseudo_dirs(SPLITS["train"]),
    output:
        model=R("train_deeplab", "model.safetensors"),
        history=R("train_deeplab", "history.parquet"),
    log:
        LOG("train_deeplab.log"),
    benchmark:
        BENCH("train_deeplab.tsv")
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["gpu_job"] * max(1, gpus("train_deeplab"))
    resources:
        gpu=gpus("train_deeplab"),
    params:
        code=code("train_deeplab"),
        torch_threads=config["threads"]["train_torch"],
        cfg=result_cfg("train_deeplab"),
        resume=RESUME("train_deeplab", "state.pt"),
    script:
        "../scripts/train_deeplab.py"


rule infer_deeplab:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        weights=R("train_deeplab", "model.safetensors"),
    output:
        nocrf=directory(R("infer_deeplab", "{split}", "nocrf", "{shard}")),
        crf=directory(R("infer_deeplab", "{split}", "crf", "{shard}")),
    log:
        LOG("infer_deeplab", "{split}_{shard}.log"),
    benchmark:
        BENCH("infer_deeplab", "{split}_{shard}.tsv")
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=1,
    params:
        code=code("infer_deeplab"),
        cfg=result_cfg("infer_deeplab"),
        model=config["train_deeplab"]["model"],
        num_shards=SHARDS,
    script:
        "../scripts/infer_deeplab.py"


rule eval_deeplab:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        preds=lambda wc: expand(
            R("infer_deeplab", wc.split, wc.variant, "{shard}"),
            shard=shard_ids(),
        ),
    output:
        summary=R("eval_deeplab", "{split}", "{variant}", "summary.json"),
        per_class=R("eval_deeplab", "{split}", "{variant}", "per_class.parquet"),
    log:
        LOG("eval_deeplab", "{split}_{variant}.log"),
    wildcard_constraints:
        variant="crf|nocrf",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["cpu_shard"]
    params:
        code=code("eval_labels"),
        mode="error",
    script:
        "../scripts/eval_labels.py"


rule voc_submission:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        preds=lambda wc: expand(
            R("infer_deeplab", wc.split, submission_variant(), "{shard}"),
            shard=shard_ids(),
        ),
    output:
        archive=R("submission", "{split}.tar.gz"),
        summary=R("submission", "{split}.json"),
    log:
        LOG("voc_submission", "{split}.log"),
    conda:
        "../../envs/report.yaml"
    threads: 1
    params:
        code=code("voc_submission"),
        variant=submission_variant(),
        competition=config["submission"]["competition"],
    script:
        "../scripts/voc_submission.py"


if config["released"]["deeplab"]:

    ruleorder: released_deeplab > train_deeplab

    rule released_deeplab:
        input:
            pth=config["released"]["deeplab"],
            classes=R("data", "classes.json"),
        output:
            model=R("train_deeplab", "model.safetensors"),
            history=R("train_deeplab", "history.parquet"),
        log:
            LOG("released_deeplab.log"),
        conda:
            "../../envs/torch.yaml"
        threads: 1
        params:
            code=code("released_deeplab"),
            model=config["train_deeplab"]["model"],
        script:
            "../scripts/released_deeplab.py"
