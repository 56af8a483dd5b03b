# RITC: CLIP text features of the corpus and QA-CLIMS CAM training. The synthetic demo
# first trains a tiny CLIP on its own images and captions (no pretrained CLIP offline).


rule train_tiny_clip:
    input:
        root=R("synthetic"),
        code=lib("clip_models.py"),
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
        cfg=config["train_tiny_clip"],
        clip=config["clip"],
    script:
        "../scripts/train_tiny_clip.py"


rule text_features:
    input:
        unpack(clip_weight_inputs),
        corpus=R("corpus", "corpus.parquet"),
        classes=R("data", "classes.json"),
        code=lib("clip_text.py", "clip_models.py"),
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
        cfg=config["text_features"],
        clip=config["clip"],
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
        code=lib(
            "train_ritc.py",
            "losses.py",
            "clip_models.py",
            "models/cam_resnet.py",
            "models/backbone.py",
            "augment.py",
            "training.py",
        ),
    output:
        model=R("train_ritc", "model.safetensors"),
        history=R("train_ritc", "history.parquet"),
    log:
        LOG("train_ritc.log"),
    benchmark:
        BENCH("train_ritc.tsv")
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["gpu_job"]
    resources:
        gpu=gpus("train_ritc"),
    params:
        cfg=config["train_ritc"],
        args=lambda wc, input, output: (
            {
                "manifest": input.manifest,
                "classes": input.classes,
                "cam_weights": input.cam,
                "model_cfg": config["train_cam"]["model"],
                "corpus_index": input.index,
                "text_features": input.features,
                "clip_cfg": config["clip"],
                "clip_weights": input.get("clip_weights"),
                "cfg": config["train_ritc"],
                "model": output.model,
                "history": output.history,
                "resume": RESUME("train_ritc", "state.pt"),
                "device": config["device"],
            }
        ),
    script:
        "../scripts/launch.py"
