from pathlib import Path

from qaclims.report import build as report_build
from qaclims.workflow.smk import job

with job(snakemake):
    plan = snakemake.params.plan  # what to show, in order (workflow/rules/common.smk)
    report_build.run(
        evals=[
            report_build.EvalItem(
                label=s["label"],
                summary=Path(s["summary"]),
                per_class=Path(s["per_class"]),
                sweep=Path(s["sweep"]) if s["sweep"] else None,
            )
            for s in plan["stages"]
        ],
        histories={k: Path(v) for k, v in plan["histories"].items()},
        corpus_stats=Path(plan["corpus"]) if plan["corpus"] else None,
        overlays=report_build.OverlaySources(
            manifest=Path(plan["manifest"]),
            columns=[
                report_build.OverlayColumn(o["label"], o["kind"], Path(o["sample"]))
                for o in plan["overlays"]
            ],
            classes=Path(plan["classes"]),
        ),
        out_dir=Path(snakemake.output.table).parent,
        num_overlays=snakemake.config["report"]["num_overlays"],
        fixed_threshold=snakemake.params.threshold,
        dead_warn=snakemake.config["train_ritc"]["dead_warn"],
        submissions=[Path(p) for p in plan["submissions"]],
    )
