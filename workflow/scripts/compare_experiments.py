from qaclims.report import experiments
from qaclims.workflow.smk import job

with job(snakemake):
    out = snakemake.output
    experiments.run(
        plan=snakemake.params.plan,  # one row per (variant, seed, evaluation)
        reference=snakemake.params.reference,
        out_table=out.table,
        out_csv=out.csv,
        out_per_class=out.per_class,
        out_html=out.html,
        out_png=out.plot,
    )
