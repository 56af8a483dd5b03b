# Refinement (IRN): CRF-refined confident seeds, the inter-pixel relation network, and
# random-walk pseudo masks; seeds and pseudo masks are both scored.


rule cam_to_ir_label:
    input:
        manifest=manifest("{split}"),
        cams=R("make_cam", "{model}", "{split}", "{shard}"),
    output:
        labels=directory(R("cam_to_ir_label", "{model}", "{split}", "{shard}")),
    log:
        LOG("cam_to_ir_label", "{model}_{split}_{shard}.log"),
    benchmark:
        BENCH("cam_to_ir_label", "{model}_{split}_{shard}.tsv")
    conda:
        "../../envs/crf.yaml"
    threads: config["threads"]["cpu_shard"]
    params:
        code=code("cam_to_ir_label"),
        cfg=result_cfg("cam_to_ir_label"),
        num_shards=SHARDS,
    script:
        "../scripts/cam_to_ir_label.py"


rule eval_seeds:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        preds=lambda wc: [d for s in SPLITS["cam"] for d in ir_label_dirs(wc.model, s)],
    output:
        summary=R("eval_seeds", "{model}", "{split}", "summary.json"),
        per_class=R("eval_seeds", "{model}", "{split}", "per_class.parquet"),
    log:
        LOG("eval_seeds", "{model}_{split}.log"),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["cpu_shard"]
    params:
        code=code("eval_labels"),
        mode="exclude",
    script:
        "../scripts/eval_labels.py"


rule train_irn:
    input:
        unpack(irn_backbone_inputs),
        manifest=manifest(SPLITS["train"]),
        labels=lambda wc: ir_label_dirs(wc.model, SPLITS["train"]),
    output:
        model=R("train_irn", "{model}", "model.safetensors"),
        history=R("train_irn", "{model}", "history.parquet"),
    log:
        LOG("train_irn", "{model}.log"),
    benchmark:
        BENCH("train_irn", "{model}.tsv")
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=1,
    params:
        code=code("train_irn"),
        torch_threads=config["threads"]["train_torch"],
        cfg=result_cfg("train_irn"),
        resume=lambda wc: RESUME("train_irn", wc.model, "state.pt"),
    script:
        "../scripts/train_irn.py"


rule make_sem_seg:
    input:
        manifest=manifest("{split}"),
        cams=R("make_cam", "{model}", "{split}", "{shard}"),
        irn=R("train_irn", "{model}", "model.safetensors"),
    output:
        masks=directory(R("make_sem_seg", "{model}", "{split}", "{shard}")),
    log:
        LOG("make_sem_seg", "{model}_{split}_{shard}.log"),
    benchmark:
        BENCH("make_sem_seg", "{model}_{split}_{shard}.tsv")
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=1,
    params:
        code=code("make_sem_seg"),
        cfg=result_cfg("make_sem_seg"),
        irn=config["train_irn"]["model"],
        num_shards=SHARDS,
    script:
        "../scripts/make_sem_seg.py"


rule eval_sem_seg:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        preds=lambda wc: expand(
            R("make_sem_seg", wc.model, "{split}", "{shard}"),
            split=SPLITS["cam"],
            shard=shard_ids(),
        ),
    output:
        summary=R("eval_sem_seg", "{model}", "{split}", "summary.json"),
        per_class=R("eval_sem_seg", "{model}", "{split}", "per_class.parquet"),
    log:
        LOG("eval_sem_seg", "{model}_{split}.log"),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["cpu_shard"]
    params:
        code=code("eval_labels"),
        mode="error",
    script:
        "../scripts/eval_labels.py"
