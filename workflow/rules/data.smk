# The data set: the synthetic world (demo) and the per-split manifests of any data set.


def dataset_root():
    if config["dataset"]["name"] == "synthetic":
        return R("synthetic")
    return config["dataset"]["root"]


def dataset_inputs(wildcards):
    if config["dataset"]["name"] == "synthetic":
        return {"root": R("synthetic")}
    return {}


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
