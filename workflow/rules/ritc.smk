# RITC: CLIP text features of the corpus and QA-CLIMS CAM training. The synthetic demo
# first trains a tiny CLIP on its own images and captions (no pretrained CLIP offline).


rule train_tiny_clip:
    input:
        root=R("synthetic"),
    output:
        model=R("train_tiny_clip", "model.safetensors"),
    log:
        LOG("train_tiny_clip.log"),
    benchmark:
        BENCH("train_tiny_clip.tsv")
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=1,
    params:
        code=code("train_tiny_clip"),
        torch_threads=config["threads"]["train_torch"],
        cfg=result_cfg("train_tiny_clip"),
        clip=result_cfg("clip"),
        resume=RESUME("train_tiny_clip", "state.pt"),
    script:
        "../scripts/train_tiny_clip.py"


rule text_features:
    input:
        unpack(clip_weight_inputs),
        corpus=R("corpus", "corpus.parquet"),
        classes=R("data", "classes.json"),
    output:
        features=R("text_features", "features.safetensors"),
        index=R("text_features", "index.parquet"),
    log:
        LOG("text_features.log"),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=1,
    params:
        code=code("text_features"),
        cfg=result_cfg("text_features"),
        clip=result_cfg("clip"),
    script:
        "../scripts/text_features.py"


rule train_ritc:
    input:
        unpack(clip_weight_inputs),
        manifest=manifest(SPLITS["train"]),
        classes=R("data", "classes.json"),
        cam=R("train_cam", "model.safetensors"),
        features=R("text_features", "features.safetensors"),
        index=R("text_features", "index.parquet"),
    output:
        model=R("train_ritc", "model.safetensors"),
        history=R("train_ritc", "history.parquet"),
    log:
        LOG("train_ritc.log"),
    benchmark:
        BENCH("train_ritc.tsv")
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["gpu_job"] * max(1, gpus("train_ritc"))
    resources:
        gpu=gpus("train_ritc"),
    params:
        code=code("train_ritc"),
        torch_threads=config["threads"]["train_torch"],
        cfg=result_cfg("train_ritc"),
        model=config["train_cam"]["model"],
        clip=result_cfg("clip"),
        resume=RESUME("train_ritc", "state.pt"),
    script:
        "../scripts/train_ritc.py"


if config["released"]["ritc"]:

    ruleorder: released_ritc > train_ritc

    rule released_ritc:
        input:
            pth=config["released"]["ritc"],
            classes=R("data", "classes.json"),
        output:
            model=R("train_ritc", "model.safetensors"),
            history=R("train_ritc", "history.parquet"),
        log:
            LOG("released_ritc.log"),
        conda:
            "../../envs/torch.yaml"
        threads: 1
        params:
            code=code("released"),
            model=config["train_cam"]["model"],
        script:
            "../scripts/released.py"
