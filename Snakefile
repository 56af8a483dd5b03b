# QA-CLIMS end to end: data -> QAPE (VQA + corpus) -> CLIP text features -> baseline CAM ->
# RITC CAM -> make/eval CAMs -> CRF seeds -> IRN -> random-walk pseudo masks -> DeepLab.
# This file only sets up and includes; see workflow/rules/*.smk and src/qaclims/.
import os

from snakemake.utils import min_version

min_version("9.12")


# The embedded demo is the config only when none is given on the command line: a shipped
# config (config/voc12.yaml, config/coco14.yaml, ...) and a user's overlays then resolve to
# the schema defaults plus those files, from any working directory.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/vqa.smk"
include: "workflow/rules/ritc.smk"
include: "workflow/rules/irn.smk"
include: "workflow/rules/deeplab.smk"
include: "workflow/rules/report.smk"


if config["experiments"]["variants"]:  # an experiment's cells and their comparison

    include: "workflow/rules/experiments.smk"


report: "workflow/report/workflow.rst"


codegraph.save_scan_cache()  # import scans of the code params, for the next parse


rule all:
    default_target: True
    input:
        all_targets(),
