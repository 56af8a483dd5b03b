# Experiments: each (variant, seed) of config `experiments` runs the stages its overrides
# reach under results/<run>/experiments/<variant>/seed<seed>/ (or .../common/ for stages no
# seed changes) with the twin of each rule below (`use rule X as X_cell`: the cell's paths
# and settings), and reads every other stage's output from the run itself, so what a
# variant does not change is computed once. Jobs of a cell run with that cell's config
# (qaclims.workflow.smk.job); rule compare_experiments tables every cell. The reach and
# the folders: qaclims.workflow.experiments. See docs/EXPERIMENTS.md.
# `use rule ... with: input:` replaces the whole input list (params merge by name): every
# twin names all of its rule's inputs (tests/test_experiments.py compares the names).
import re


wildcard_constraints:
    exp="|".join(re.escape(v) for v in VARIANTS),
    cell=rf"seed\d+|{experiments.COMMON}",


use rule run_config as run_config_cell with:
    output:
        config=X("config.yaml"),
    log:
        XLOG("run_config.log"),
    params:
        code=code("run_config"),
        resolved=cell_cfg,


use rule train_tiny_blip as train_tiny_blip_cell with:
    output:
        model=directory(X("train_tiny_blip")),
    log:
        XLOG("train_tiny_blip.log"),
    benchmark:
        XBENCH("train_tiny_blip.tsv")
    params:
        cfg=xresult("train_tiny_blip"),
        resume=XRESUME("train_tiny_blip", "state.pt"),


use rule vqa as vqa_cell with:
    input:
        **_cell_vqa_inputs(),
        manifest=manifest(SPLITS["train"]),
        classes=R("data", "classes.json"),
    output:
        fg=X("vqa", "fg", "{shard}.parquet"),
        bg=X("vqa", "bg", "{shard}.parquet"),
    log:
        XLOG("vqa", "{shard}.log"),
    benchmark:
        XBENCH("vqa", "{shard}.tsv")
    params:
        cfg=xresult("vqa"),


use rule corpus as corpus_cell with:
    input:
        answers=lambda wc: [
            at(wc, "vqa", k, f"{s}.parquet") for k in ("fg", "bg") for s in shard_ids()
        ],
        classes=R("data", "classes.json"),
    output:
        corpus=X("corpus", "corpus.parquet"),
        stats=X("corpus", "stats.parquet"),
    log:
        XLOG("corpus.log"),
    params:
        cfg=xresult("corpus"),


use rule train_tiny_clip as train_tiny_clip_cell with:
    output:
        model=X("train_tiny_clip", "model.safetensors"),
    log:
        XLOG("train_tiny_clip.log"),
    benchmark:
        XBENCH("train_tiny_clip.tsv")
    params:
        cfg=xresult("train_tiny_clip"),
        clip=xresult("clip"),
        resume=XRESUME("train_tiny_clip", "state.pt"),


use rule text_features as text_features_cell with:
    input:
        **_cell_clip_weights(),
        corpus=lambda wc: at(wc, "corpus", "corpus.parquet"),
        classes=R("data", "classes.json"),
    output:
        features=X("text_features", "features.safetensors"),
        index=X("text_features", "index.parquet"),
    log:
        XLOG("text_features.log"),
    params:
        cfg=xresult("text_features"),
        clip=xresult("clip"),


use rule train_cam as train_cam_cell with:
    output:
        model=X("train_cam", "model.safetensors"),
        history=X("train_cam", "history.parquet"),
    log:
        XLOG("train_cam.log"),
    benchmark:
        XBENCH("train_cam.tsv")
    params:
        cfg=xresult("train_cam"),
        resume=XRESUME("train_cam", "state.pt"),


use rule train_ritc as train_ritc_cell with:
    input:
        **_cell_clip_weights(),
        manifest=manifest(SPLITS["train"]),
        classes=R("data", "classes.json"),
        cam=lambda wc: at(wc, "train_cam", "model.safetensors"),
        features=lambda wc: at(wc, "text_features", "features.safetensors"),
        index=lambda wc: at(wc, "text_features", "index.parquet"),
    output:
        model=X("train_ritc", "model.safetensors"),
        history=X("train_ritc", "history.parquet"),
    log:
        XLOG("train_ritc.log"),
    benchmark:
        XBENCH("train_ritc.tsv")
    params:
        cfg=xresult("train_ritc"),
        model=xsetting("train_cam", "model"),
        clip=xresult("clip"),
        resume=XRESUME("train_ritc", "state.pt"),


use rule make_cam as make_cam_cell with:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        weights=lambda wc: at(wc, f"train_{wc.model}", "model.safetensors"),
    output:
        cams=cam_output(X("make_cam", "{model}", "{split}", "{shard}")),
    log:
        XLOG("make_cam", "{model}_{split}_{shard}.log"),
    benchmark:
        XBENCH("make_cam", "{model}_{split}_{shard}.tsv")
    params:
        cfg=xresult("make_cam"),
        model=xsetting("train_cam", "model"),


use rule eval_cam as eval_cam_cell with:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        cams=_cells_eval_cam_dirs,
    output:
        summary=X("eval_cam", "{model}", "{split}", "summary.json"),
        per_class=X("eval_cam", "{model}", "{split}", "per_class.parquet"),
        sweep=X("eval_cam", "{model}", "{split}", "sweep.parquet"),
    log:
        XLOG("eval_cam", "{model}_{split}.log"),
    params:
        cfg=xresult("eval_cam"),


use rule cam_to_ir_label as cam_to_ir_label_cell with:
    input:
        manifest=manifest("{split}"),
        cams=lambda wc: at(wc, "make_cam", wc.model, wc.split, wc.shard),
    output:
        labels=directory(X("cam_to_ir_label", "{model}", "{split}", "{shard}")),
    log:
        XLOG("cam_to_ir_label", "{model}_{split}_{shard}.log"),
    benchmark:
        XBENCH("cam_to_ir_label", "{model}_{split}_{shard}.tsv")
    params:
        cfg=xresult("cam_to_ir_label"),


use rule eval_seeds as eval_seeds_cell with:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        preds=lambda wc: [
            at(wc, "cam_to_ir_label", wc.model, s, k)
            for s in SPLITS["cam"]
            for k in shard_ids()
        ],
    output:
        summary=X("eval_seeds", "{model}", "{split}", "summary.json"),
        per_class=X("eval_seeds", "{model}", "{split}", "per_class.parquet"),
    log:
        XLOG("eval_seeds", "{model}_{split}.log"),


use rule train_irn as train_irn_cell with:
    input:
        unpack(_cell_irn_backbone),
        manifest=manifest(SPLITS["train"]),
        labels=lambda wc: [
            at(wc, "cam_to_ir_label", wc.model, SPLITS["train"], k)
            for k in shard_ids()
        ],
    output:
        model=X("train_irn", "{model}", "model.safetensors"),
        history=X("train_irn", "{model}", "history.parquet"),
    log:
        XLOG("train_irn", "{model}.log"),
    benchmark:
        XBENCH("train_irn", "{model}.tsv")
    params:
        cfg=xresult("train_irn"),
        resume=lambda wc: XRESUME("train_irn", wc.model, "state.pt").format(
            exp=wc.exp, cell=wc.cell
        ),


use rule make_sem_seg as make_sem_seg_cell with:
    input:
        manifest=manifest("{split}"),
        cams=lambda wc: at(wc, "make_cam", wc.model, wc.split, wc.shard),
        irn=lambda wc: at(wc, "train_irn", wc.model, "model.safetensors"),
    output:
        masks=directory(X("make_sem_seg", "{model}", "{split}", "{shard}")),
    log:
        XLOG("make_sem_seg", "{model}_{split}_{shard}.log"),
    benchmark:
        XBENCH("make_sem_seg", "{model}_{split}_{shard}.tsv")
    params:
        cfg=xresult("make_sem_seg"),
        irn=xsetting("train_irn", "model"),


use rule eval_sem_seg as eval_sem_seg_cell with:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        preds=lambda wc: [
            at(wc, "make_sem_seg", wc.model, s, k)
            for s in SPLITS["cam"]
            for k in shard_ids()
        ],
    output:
        summary=X("eval_sem_seg", "{model}", "{split}", "summary.json"),
        per_class=X("eval_sem_seg", "{model}", "{split}", "per_class.parquet"),
    log:
        XLOG("eval_sem_seg", "{model}_{split}.log"),


use rule train_deeplab as train_deeplab_cell with:
    input:
        manifest=manifest(SPLITS["train"]),
        classes=R("data", "classes.json"),
        pseudo=lambda wc: [
            at(wc, "make_sem_seg", refine_source(), SPLITS["train"], k)
            for k in shard_ids()
        ],
    output:
        model=X("train_deeplab", "model.safetensors"),
        history=X("train_deeplab", "history.parquet"),
    log:
        XLOG("train_deeplab.log"),
    benchmark:
        XBENCH("train_deeplab.tsv")
    params:
        cfg=xresult("train_deeplab"),
        resume=XRESUME("train_deeplab", "state.pt"),


use rule infer_deeplab as infer_deeplab_cell with:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        weights=lambda wc: at(wc, "train_deeplab", "model.safetensors"),
    output:
        nocrf=directory(X("infer_deeplab", "{split}", "nocrf", "{shard}")),
        crf=directory(X("infer_deeplab", "{split}", "crf", "{shard}")),
    log:
        XLOG("infer_deeplab", "{split}_{shard}.log"),
    benchmark:
        XBENCH("infer_deeplab", "{split}_{shard}.tsv")
    params:
        cfg=xresult("infer_deeplab"),
        model=xsetting("train_deeplab", "model"),


use rule eval_deeplab as eval_deeplab_cell with:
    input:
        manifest=manifest("{split}"),
        classes=R("data", "classes.json"),
        preds=lambda wc: [
            at(wc, "infer_deeplab", wc.split, wc.variant, k) for k in shard_ids()
        ],
    output:
        summary=X("eval_deeplab", "{split}", "{variant}", "summary.json"),
        per_class=X("eval_deeplab", "{split}", "{variant}", "per_class.parquet"),
    log:
        XLOG("eval_deeplab", "{split}_{variant}.log"),


COMPARISON = comparison_plan()  # one row per (variant, seed, evaluation)


rule compare_experiments:
    input:
        [f for r in COMPARISON for f in (r["summary"], r["per_class"])],
        configs=[
            os.path.join(
                "results",
                RUN,
                "experiments",
                c.variant,
                f"seed{c.seed}",
                "config.yaml",
            )
            for c in CELLS
        ],
    output:
        table=R("experiments", "comparison.parquet"),
        csv=R("experiments", "comparison.csv"),
        per_class=R("experiments", "per_class.csv"),
        html=report(
            R("experiments", "comparison.html"),
            caption="../report/experiments.rst",
            category="5. Experiments",
            labels={"figure": "variants (mean ± sd over seeds)"},
        ),
        plot=report(
            R("experiments", "comparison.png"),
            caption="../report/experiments.rst",
            category="5. Experiments",
            labels={"figure": "variants (plot)"},
        ),
    log:
        LOG("compare_experiments.log"),
    conda:
        "../../envs/report.yaml"
    threads: 1
    params:
        code=code("compare_experiments"),
        plan=COMPARISON,
        reference=config["experiments"]["reference"] or (VARIANTS or [""])[0],
    script:
        "../scripts/compare_experiments.py"


rule released_cell:
    input:
        pth=lambda wc: cell_cfg(wc)["released"][wc.net],
        classes=R("data", "classes.json"),
    output:
        model=X("released_{net}", "train_{net}", "model.safetensors"),
        history=X("released_{net}", "train_{net}", "history.parquet"),
    log:
        XLOG("released_{net}.log"),
    wildcard_constraints:
        net="cam|ritc",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        code=code("released"),
        model=xsetting("train_cam", "model"),
    script:
        "../scripts/released.py"


rule released_deeplab_cell:
    input:
        pth=lambda wc: cell_cfg(wc)["released"]["deeplab"],
        classes=R("data", "classes.json"),
    output:
        model=X("released_deeplab", "train_deeplab", "model.safetensors"),
        history=X("released_deeplab", "train_deeplab", "history.parquet"),
    log:
        XLOG("released_deeplab.log"),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        code=code("released_deeplab"),
        model=xsetting("train_deeplab", "model"),
    script:
        "../scripts/released_deeplab.py"
