# Data: the canonical store, the partitions of each split (per run or per seed:
# docs/decisions.md#partitions) and its LV fit (docs/decisions.md#low-variance-trigger).


localrules:
    ingest,


rule ingest:
    # Runs on the submitting node: it reads a whole archive (fetched by fetch_dataset when it
    # has a url) once. Offline like every job but the fetch rules.
    input:
        unpack(get_ingest_input),
    output:
        store=directory(PATHS.store),
    log:
        log_of("ingest", "{dataset}"),
    benchmark:
        benchmark_of("ingest", "{dataset}")
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        kind=get_dataset_kind,
        dataset_params=get_dataset_params,
        classes=get_dataset_classes,
    shell:
        "(backdoor-eval ingest --dataset {params.kind:q} --params {params.dataset_params:q} --out {output.store:q}"
        " && backdoor-eval check-store --store {output.store:q} --classes {params.classes:q}) > {log:q} 2>&1"


rule partition:
    input:
        store=PATHS.store,
    output:
        partitions=PATHS.partitions,
    log:
        log_of("partition", "{dataset}/{split}"),
    benchmark:
        benchmark_of("partition", "{dataset}/{split}")
    conda:
        "../../envs/backdoor-eval.yaml"
    shell:
        "backdoor-eval partition --store {input.store:q} --split {wildcards.split}"
        " --out {output.partitions:q} > {log:q} 2>&1"


rule fit_lv:
    # Only lv runs and the gallery need it; every lv run of the split reuses it.
    input:
        store=PATHS.store,
        partitions=PATHS.partitions,
    output:
        lv_fit=PATHS.lv_fit,
    log:
        log_of("fit_lv", "{dataset}/{split}"),
    benchmark:
        benchmark_of("fit_lv", "{dataset}/{split}")
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        options=get_lv_fit_options,
    shell:
        "backdoor-eval fit-lv --store {input.store:q} --partitions {input.partitions:q} --split {wildcards.split}"
        " {params.options} --out {output.lv_fit:q} > {log:q} 2>&1"
