# The data set: the synthetic world (demo) and the per-split manifests of any data set,
# and the record of the run's resolved config.


rule run_config:
    output:
        config=R("config.yaml"),
    log:
        LOG("run_config.log"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    threads: 1
    params:
        code=code("run_config"),
        resolved=config,
    script:
        "../scripts/run_config.py"


rule synthetic:
    output:
        root=directory(R("synthetic")),
    log:
        LOG("synthetic.log"),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        code=code("synthetic"),
        cfg=result_cfg("synthetic"),
    script:
        "../scripts/synthetic.py"


rule dataset:
    input:
        unpack(dataset_inputs),
    output:
        **dataset_extra_outputs(),
        classes=R("data", "classes.json"),
        manifests=expand(
            R("data", "manifest", "{split}.parquet"), split=config["dataset"]["splits"]
        ),
    log:
        LOG("dataset.log"),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]["cpu_shard"]
    params:
        code=code("dataset"),
        cfg=result_cfg("dataset"),
        root=dataset_root(),
        data=data_fingerprint,
    script:
        "../scripts/dataset.py"


if SPLITS["test"]:

    rule test_manifest:
        output:
            manifest=manifest(SPLITS["test"]),
        log:
            LOG("test_manifest.log"),
        conda:
            "../../envs/torch.yaml"
        threads: config["threads"]["cpu_shard"]
        params:
            code=code("test_manifest"),
            cfg=result_cfg("dataset"),
            root=dataset_root(),
            data=test_fingerprint,
        script:
            "../scripts/test_manifest.py"
