# joulebench: what Green-AI techniques buy, in accuracy and joules.


configfile: "config/config.yaml"


# The HTML report's front page (snakemake --report): what the experiment is and how to read it.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/energy.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/compress.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        report_outputs(),
        data_outputs(),
