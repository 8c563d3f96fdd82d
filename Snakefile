# ScaleDiff as a Snakemake workflow: pool -> ingest -> select -> diffgen -> distill -> filter
# -> sft -> eval -> report. Wiring only; every rule calls `python -m scalediff.<module>`.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless --configfile names another config: then that one replaces it
# (Snakemake would otherwise deep-merge the two, mixing e.g. tiny and Hub model entries).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/plan.smk"
include: "rules/ref.smk"
include: "rules/models.smk"
include: "rules/ingest.smk"
include: "rules/select.smk"
include: "rules/diffgen.smk"
include: "rules/distill.smk"
include: "rules/verify.smk"
include: "rules/filter.smk"
include: "rules/sft.smk"
include: "rules/eval.smk"
include: "rules/report.smk"
include: "rules/export.smk"
include: "rules/experiments.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
        rules.export_llamafactory.output,
