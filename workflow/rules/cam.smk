# Baseline CAM classifier (IRN recipe), multi-scale CAM inference and CAM evaluation.
# make_cam and eval_cam serve both the baseline ("cam") and QA-CLIMS ("ritc") networks.


wildcard_constraints:
    model="cam|ritc",
    shard=r"\d{3}",
    split=r"[A-Za-z0-9_]+",


rule train_cam:
    input:
        manifest=manifest(SPLITS["train"]),
        classes=R("data", "classes.json"),
    output:
        model=R("train_cam", "model.safetensors"),
        history=R("train_cam", "history.parquet"),
    log:
        LOG("train_cam.log"),
    benchmark:
        BENCH("train_cam.tsv")
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=1,
    params:
        code=code("train_cam"),
        torch_threads=config["threads"]["train_torch"],
        cfg=result_cfg("train_cam"),
        resume=RESUME("train_cam", "state.pt"),
    script:
        "../scripts/train_cam.py"


rule make_cam:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        weights=R("train_{model}", "model.safetensors"),
    output:
        cams=cam_output(R("make_cam", "{model}", "{split}", "{shard}")),
    log:
        LOG("make_cam", "{model}_{split}_{shard}.log"),
    benchmark:
        BENCH("make_cam", "{model}_{split}_{shard}.tsv")
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=1,
    params:
        code=code("make_cam"),
        cfg=result_cfg("make_cam"),
        model=config["train_cam"]["model"],
        num_shards=SHARDS,
    script:
        "../scripts/make_cam.py"


rule eval_cam:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        cams=eval_cam_dirs,
    output:
        summary=R("eval_cam", "{model}", "{split}", "summary.json"),
        per_class=R("eval_cam", "{model}", "{split}", "per_class.parquet"),
        sweep=R("eval_cam", "{model}", "{split}", "sweep.parquet"),
    log:
        LOG("eval_cam", "{model}_{split}.log"),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["cpu_shard"]
    params:
        code=code("eval_cam"),
        cfg=result_cfg("eval_cam"),
    script:
        "../scripts/eval_cam.py"


if config["released"]["cam"]:

    ruleorder: released_cam > train_cam

    rule released_cam:
        input:
            pth=config["released"]["cam"],
            classes=R("data", "classes.json"),
        output:
            model=R("train_cam", "model.safetensors"),
            history=R("train_cam", "history.parquet"),
        log:
            LOG("released_cam.log"),
        conda:
            "../../envs/torch.yaml"
        threads: 1
        params:
            code=code("released"),
            model=config["train_cam"]["model"],
        script:
            "../scripts/released.py"
