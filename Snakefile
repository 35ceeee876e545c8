# backdoor-eval: systematic backdoor data-poisoning experiments (Truong et al., CVPR-W 2020).
#   snakemake --cores 2                                   # the embedded quickstart
#   snakemake --configfile config/config.yaml --cores 16 --resources gpu=4   # the paper grid
# Layout, wildcards and GPU slots: docs/workflow.md; config keys: config/README.md.
from snakemake.utils import min_version

from backdoor_eval.config import prepare_config
from backdoor_eval.scheduling import limit_reevaluation_timers

min_version("9.0")

# Snakemake's scheduler otherwise adds a self-renewing wake-up timer per finished job, and its
# main process spends a growing share of a core on them (backdoor_eval.scheduling).
if workflow.is_main_process:
    limit_reevaluation_timers()


# The embedded default. A --configfile on the command line replaces it rather
# than being merged into it (a merge would leak quickstart keys into the paper grid).
if not workflow.overwrite_configfiles:

    configfile: "config/quickstart.yaml"


# The package's one loader: the schema (workflow/schemas/config.schema.yaml,
# shipped inside the package) with its defaults, then every check that can be
# made from the config alone, before any job. The registry names (which need
# torch and timm, ~4-9 s of imports) are checked by the main Snakemake process
# only, not again by each job that re-reads this file on a cluster.
prepare_config(config, check_registries=workflow.is_main_process)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/analyze_common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/poison.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/analyze.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
        get_analysis_output(),
