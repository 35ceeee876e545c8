# Data: the canonical store, the per-seed partitions (SPEC 1) and the LV fit (SPEC 3).


localrules:
    ingest,


rule ingest:
    # Runs on the head node: it may download the official archive.
    output:
        directory(STORE),
    log:
        f"{RESULTS}/logs/ingest/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest/{{dataset}}.tsv"
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        kind=dataset_kind,
        dataset_params=dataset_params,
        classes=dataset_classes,
    shell:
        "(backdoor-eval ingest --dataset {params.kind:q} --params {params.dataset_params:q} --out {output:q}"
        " && backdoor-eval check-store --store {output:q} --classes {params.classes:q}) > {log:q} 2>&1"


rule partition:
    input:
        store=STORE,
    output:
        PARTITIONS,
    log:
        f"{RESULTS}/logs/partition/{{dataset}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/partition/{{dataset}}/seed{{seed}}.tsv"
    conda:
        "../../envs/backdoor-eval.yaml"
    shell:
        "backdoor-eval partition --store {input.store:q} --seed {wildcards.seed} --out {output:q} > {log:q} 2>&1"


rule fit_lv:
    # Only lv runs and the gallery need it; every run of the split reuses it.
    input:
        store=STORE,
        partitions=PARTITIONS,
    output:
        LV_FIT,
    log:
        f"{RESULTS}/logs/fit_lv/{{dataset}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit_lv/{{dataset}}/seed{{seed}}.tsv"
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        variance_fraction=ex.lv_variance_fraction(config),
    shell:
        "backdoor-eval fit-lv --store {input.store:q} --partitions {input.partitions:q} --seed {wildcards.seed}"
        " --variance-fraction {params.variance_fraction} --out {output:q} > {log:q} 2>&1"
