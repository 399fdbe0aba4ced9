# unetpipe: U-Net segmentation of cells and nuclei, from raw images to
# instance labels. Run `snakemake --cores N`; see README.md.


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    summarize,
    report_metrics,
    report_config,
    report_runtimes,
    report_tune,


rule all:
    default_target: True
    input:
        all_outputs(),
