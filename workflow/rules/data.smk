# The data set: the synthetic world (demo) and the per-split manifests of any data set.


rule synthetic:
    output:
        root=directory(R("synthetic")),
    log:
        LOG("synthetic.log"),
    params:
        cfg=config["synthetic"],
    threads: 1
    conda:
        "../../envs/torch.yaml"
    input:
        code=lib("synthetic.py"),
    script:
        "../scripts/synthetic.py"


rule dataset:
    input:
        unpack(dataset_inputs),
        code=lib("datasets/__init__.py", "datasets/base.py", "datasets/voc.py", "datasets/coco.py"),
    output:
        classes=R("data", "classes.json"),
        manifests=expand(R("data", "manifest", "{split}.parquet"), split=config["dataset"]["splits"]),
    log:
        LOG("dataset.log"),
    params:
        cfg=config["dataset"],
        root=dataset_root(),
    threads: 1
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/dataset.py"
