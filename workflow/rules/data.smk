# The data set: the synthetic world (demo) and the per-split manifests of any data set.


rule synthetic:
    input:
        code=lib("synthetic.py"),
    output:
        root=directory(R("synthetic")),
    log:
        LOG("synthetic.log"),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        cfg=config["synthetic"],
    script:
        "../scripts/synthetic.py"


rule dataset:
    input:
        unpack(dataset_inputs),
        code=lib(
            "datasets/__init__.py",
            "datasets/base.py",
            "datasets/voc.py",
            "datasets/coco.py",
        ),
    output:
        classes=R("data", "classes.json"),
        manifests=expand(
            R("data", "manifest", "{split}.parquet"), split=config["dataset"]["splits"]
        ),
    log:
        LOG("dataset.log"),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        cfg=config["dataset"],
        root=dataset_root(),
    script:
        "../scripts/dataset.py"
