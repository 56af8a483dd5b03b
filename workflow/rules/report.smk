# Figures and tables for `snakemake --report`: stage mIoU table, per-class IoU, threshold
# sweeps, training losses, overlays, corpus statistics.


rule report:
    input:
        report_inputs,
    output:
        table=report(
            R("report", "index.html"),
            caption="../report/stages.rst",
            category="1. Results",
            labels={"figure": "mIoU per stage"},
        ),
        per_class=report(
            R("report", "per_class_iou.png"),
            caption="../report/per_class.rst",
            category="1. Results",
            labels={"figure": "IoU per class"},
        ),
        per_class_table=report(
            R("report", "per_class.html"),
            caption="../report/per_class_table.rst",
            category="1. Results",
            labels={"figure": "IoU per class (table)"},
        ),
        sweep=report(
            R("report", "sweep.png"),
            caption="../report/sweep.rst",
            category="2. CAMs",
            labels={"figure": "threshold sweep"},
        ),
        overlays=report(
            R("report", "overlays.png"),
            caption="../report/overlays.rst",
            category="2. CAMs",
            labels={"figure": "overlays"},
        ),
        losses=report(
            R("report", "losses.png"),
            caption="../report/losses.rst",
            category="3. Training",
            labels={"figure": "losses"},
        ),
        corpus=report(
            R("report", "corpus.html"),
            caption="../report/corpus.rst",
            category="4. QAPE corpus",
            labels={"figure": "corpus statistics"},
        ),
    log:
        LOG("report.log"),
    conda:
        "../../envs/report.yaml"
    threads: 1
    params:
        code=code("report"),
        cfg=result_cfg("report"),
        threshold=config["eval_cam"]["threshold"],
        plan=report_plan(),
    script:
        "../scripts/report.py"


rule overlay_sample:
    """The maps one overlay column shows (every class's row), copied out of its shard
    folders as soon as they exist: the report reads this small file, so temp() CAM folders
    need not wait for it; report settings and plotting code are not its inputs.
    """
    input:
        manifest=manifest(SPLITS["eval_cam"]),
        dirs=lambda wc: overlay_sources()[wc.source][2],
    output:
        overlay_sample("{source}"),
    log:
        LOG("overlay_sample", "{source}.log"),
    wildcard_constraints:
        source="|".join(overlay_sources()) or "none",
    localrule: True  # reads a few files: not worth a cluster job
    conda:
        "../../envs/report.yaml"
    threads: 1
    params:
        code=code("overlay_sample"),
        kind=lambda wc: overlay_sources()[wc.source][1],
    script:
        "../scripts/overlay_sample.py"
