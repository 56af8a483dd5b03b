# QA-CLIMS end to end: data -> QAPE (VQA + corpus) -> CLIP text features -> baseline CAM ->
# RITC CAM -> make/eval CAMs -> CRF seeds -> IRN -> random-walk pseudo masks -> DeepLab.
# This file only sets up and includes; see workflow/rules/*.smk and src/qaclims/.
from snakemake.utils import min_version

min_version("9.12")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/vqa.smk"
include: "workflow/rules/ritc.smk"
include: "workflow/rules/irn.smk"
include: "workflow/rules/deeplab.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
