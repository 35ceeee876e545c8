# Data: the canonical store, the partitions of each split (per run or per seed:
# docs/decisions.md#partitions) and the fits of its fitted triggers (LV: docs/decisions.md#low-variance-trigger).


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


# One fit rule per fitted trigger (backdoor_eval.triggers.fitted_triggers; for lv: fit_lv running
# `backdoor-eval fit-lv`, writing lv_fit.npz). Only that trigger's runs and Fig. 2 need it; every run
# of the trigger on the split reuses it.
for _kind in triggers.fitted_triggers():

    rule:
        name:
            f"fit_{_kind}"
        input:
            store=PATHS.store,
            partitions=PATHS.partitions,
        output:
            **{names.fit_name(_kind): PATHS.trigger_fit(_kind)},
        log:
            log_of(f"fit_{_kind}", "{dataset}/{split}"),
        benchmark:
            benchmark_of(f"fit_{_kind}", "{dataset}/{split}")
        conda:
            "../../envs/backdoor-eval.yaml"
        params:
            options=get_fit_options(_kind),
        shell:
            f"backdoor-eval {names.fit_command(_kind)} --store {{input.store:q}} --partitions {{input.partitions:q}}"
            f" --split {{wildcards.split}} {{params.options}} --out {{output.{names.fit_name(_kind)}:q}} > {{log:q}} 2>&1"
