# Training (docs/decisions.md#training): the poison phase with early stopping,
# clean retraining, and the per-run summary. train/retrain hold one GPU each
# (resources: gpu=1; cap them with --resources gpu=N) and take a GPU slot via
# --gpu-lock-dir.


localrules:
    summarize,


rule train:
    input:
        unpack(get_run_data),
        unpack(get_model_weights),
    output:
        model=model_file(PATHS.phase_file(POISON_PHASE, "model")),
        epochs=PATHS.phase_file(POISON_PHASE, "epochs"),
        final=PATHS.phase_file(POISON_PHASE, "final"),
    log:
        log_of("train", RUN_WILDCARD),
    benchmark:
        benchmark_of("train", RUN_WILDCARD)
    conda:
        "../../envs/backdoor-eval.yaml"
    threads: job_resource("train", "threads")
    resources:
        gpu=1,
        mem_mb=job_resource("train", "mem_mb"),
        runtime=lambda wildcards, attempt: job_resource("train", "runtime") * attempt,
    params:
        checkpoint=get_checkpoint(POISON_PHASE),
        options=get_train_options,
    shell:
        "backdoor-eval train --store {input.store:q} --partitions {input.partitions:q} --poisoned {input.poisoned:q}"
        " {params.options} --threads {threads} --checkpoint {params.checkpoint:q}"
        " --out-model {output.model:q} --out-epochs {output.epochs:q} --out-final {output.final:q}"
        " > {log:q} 2>&1"


rule retrain:
    input:
        unpack(get_run_data),
        model=PATHS.phase_file(POISON_PHASE, "model"),
    output:
        model=model_file(PATHS.phase_file(CLEAN_PHASE, "model")),
        epochs=PATHS.phase_file(CLEAN_PHASE, "epochs"),
        final=PATHS.phase_file(CLEAN_PHASE, "final"),
    log:
        log_of("retrain", RUN_WILDCARD),
    benchmark:
        benchmark_of("retrain", RUN_WILDCARD)
    conda:
        "../../envs/backdoor-eval.yaml"
    threads: job_resource("retrain", "threads")
    resources:
        gpu=1,
        mem_mb=job_resource("retrain", "mem_mb"),
        runtime=lambda wildcards, attempt: job_resource("retrain", "runtime") * attempt,
    params:
        checkpoint=get_checkpoint(CLEAN_PHASE),
        options=get_train_options,
    shell:
        "backdoor-eval retrain --store {input.store:q} --partitions {input.partitions:q} --poisoned {input.poisoned:q}"
        " --init-model {input.model:q} {params.options} --threads {threads}"
        " --checkpoint {params.checkpoint:q}"
        " --out-model {output.model:q} --out-epochs {output.epochs:q} --out-final {output.final:q}"
        " > {log:q} 2>&1"


rule summarize:
    # A few seconds of pandas: runs where the results are, not on a cluster node.
    input:
        unpack(get_summarize_input),
    output:
        summary=PATHS.run_summary(),
        epochs=PATHS.run_epochs(),
    log:
        log_of("summarize", RUN_WILDCARD),
    benchmark:
        benchmark_of("summarize", RUN_WILDCARD)
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        options=get_summarize_options,
    shell:
        "backdoor-eval summarize --poison-final {input.poison_final:q} --poison-epochs {input.poison_epochs:q}"
        " {params.options} --out-summary {output.summary:q} --out-epochs {output.epochs:q} > {log:q} 2>&1"
