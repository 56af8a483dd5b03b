from pathlib import Path

from qaclims.report import build as report_build
from qaclims.workflow.smk import job

with job(snakemake):
    inp = snakemake.input
    keys = sorted(inp.keys())

    def group(prefix):
        return {k.removeprefix(prefix): inp[k] for k in keys if k.startswith(prefix)}

    sweeps = group("sweep_")
    evals = [
        report_build.EvalItem(
            label=name.split("_", 1)[1],  # names are "<order>_<label>"
            summary=Path(path),
            per_class=Path(inp["per_class_" + name]),
            sweep=Path(sweeps[name]) if name in sweeps else None,
        )
        for name, path in group("summary_").items()
    ]
    overlays = report_build.OverlaySources(
        manifest=Path(inp["manifest"]),
        cam_dirs={k.split("_", 1)[1]: [Path(p) for p in v] for k, v in group("cams_").items()},
        label_dirs={k: [Path(p) for p in v] for k, v in group("masks_").items()},
    )
    report_build.run(
        evals=evals,
        histories={k: Path(v) for k, v in group("history_").items()},
        corpus_stats=Path(inp["corpus"]) if "corpus" in keys else None,
        overlays=overlays,
        out_dir=Path(snakemake.output.table).parent,
        num_overlays=snakemake.config["report"]["num_overlays"],
        fixed_threshold=snakemake.params.threshold,
    )
