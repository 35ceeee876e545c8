# The network, on the submitting node only (docs/workflow.md#offline-compute-nodes): pretrained
# weights and dataset archives are fetched by these local rules before any compute job; every
# other job runs with the hub offline and downloads off (common.smk's shell prefix) and reads files.


localrules:
    fetch,
    fetch_weights,
    fetch_dataset,


rule fetch:
    # `snakemake fetch`: everything the config needs from the network, and nothing else (e.g. on a
    # machine with internet, before copying resources/ to one without).
    input:
        list(WEIGHTS_TO_FETCH),
        sorted(ARCHIVE_DATASET),


rule fetch_weights:
    # A pretrained model's backbone, as the safetensors file its train jobs read
    # (backdoor_eval.offline.model_weights).
    output:
        weights=f"{offline.WEIGHTS_DIR}/{{weights}}",
    log:
        log_of("fetch_weights", "{weights}"),
    benchmark:
        benchmark_of("fetch_weights", "{weights}")
    wildcard_constraints:
        weights=exactly(p.removeprefix(f"{offline.WEIGHTS_DIR}/") for p in WEIGHTS_TO_FETCH),
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        options=get_fetch_weights_options,
    shell:
        "HF_HUB_OFFLINE=0 BACKDOOR_EVAL_OFFLINE=0 backdoor-eval fetch-weights {params.options}"
        " --out {output.weights:q} > {log:q} 2>&1"


rule fetch_dataset:
    # A dataset's archive, where its reader reads it (<cache_dir>/<file name of the url>).
    output:
        archive="{archive}",
    log:
        log_of("fetch_dataset", "{archive}"),
    benchmark:
        benchmark_of("fetch_dataset", "{archive}")
    wildcard_constraints:
        archive=exactly(ARCHIVE_DATASET),
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        kind=get_fetched_dataset_kind,
        dataset_params=get_fetched_dataset_params,
    shell:
        "HF_HUB_OFFLINE=0 BACKDOOR_EVAL_OFFLINE=0 backdoor-eval fetch-dataset --dataset {params.kind:q}"
        " --params {params.dataset_params:q} --out {output.archive:q} > {log:q} 2>&1"
