# Analyses of trained runs (docs/detection.md): each method an experiment lists under `analyses:`
# runs once per run (rule analyze, one result file per run and method), filter-then-retrain trains
# each run again without what a detector flagged (rule filter_retrain), and the results are gathered
# like runs.parquet into detections.parquet and defenses.parquet, with their tables and figures.
# The analyze rule lists the run's model.pt as an input, so Snakemake keeps that temporary file
# (keep_models: false) until every analysis of the run has read it. Input functions: analyze_common.smk.


localrules:
    analysis_membership,
    aggregate_detections,
    aggregate_defenses,
    detection_table,
    defense_table,
    detection_figure,


rule analyze:
    input:
        unpack(get_analysis_input),
    output:
        result=PATHS.analysis_file("{method}", "parquet"),
        details=PATHS.analysis_file("{method}", "npz"),
    log:
        log_of("analyze", ANALYSIS_JOB),
    benchmark:
        benchmark_of("analyze", ANALYSIS_JOB)
    wildcard_constraints:
        method=one_of(ANALYSES.names()),
    conda:
        "../../envs/backdoor-eval.yaml"
    threads: 1
    resources:
        gpu=lambda wildcards: int(ANALYSES.get(wildcards.method).needs_model),
        mem_mb=job_resource("retrain", "mem_mb"),
        runtime=lambda wildcards, attempt: job_resource("retrain", "runtime") * attempt,
    params:
        options=get_analysis_options,
    shell:
        "backdoor-eval analyze --store {input.store:q} --partitions {input.partitions:q} --poisoned {input.poisoned:q}"
        " {params.options} --threads {threads} --out-result {output.result:q} --out-details {output.details:q}"
        " > {log:q} 2>&1"


rule filter_retrain:
    # The train job again, from the same initial weights and settings, without the flagged images.
    input:
        unpack(get_run_data),
        unpack(get_model_weights),
        exclude=PATHS.analysis_file("{method}", "npz"),
    output:
        model=model_file(PATHS.phase_file(POISON_PHASE, "model", FILTERED_RUN)),
        epochs=PATHS.phase_file(POISON_PHASE, "epochs", FILTERED_RUN),
        final=PATHS.phase_file(POISON_PHASE, "final", FILTERED_RUN),
    log:
        log_of("filter_retrain", FILTERED_RUN),
    benchmark:
        benchmark_of("filter_retrain", FILTERED_RUN)
    wildcard_constraints:
        method=one_of(DETECTORS),
    conda:
        "../../envs/backdoor-eval.yaml"
    threads: job_resource("train", "threads")
    resources:
        gpu=1,
        mem_mb=job_resource("train", "mem_mb"),
        runtime=lambda wildcards, attempt: job_resource("train", "runtime") * attempt,
    params:
        checkpoint=f"{PATHS.checkpoint_root}/{FILTERED_RUN}/{POISON_PHASE}.pt",
        options=get_train_options,
    shell:
        "backdoor-eval train --store {input.store:q} --partitions {input.partitions:q} --poisoned {input.poisoned:q}"
        " --exclude {input.exclude:q} {params.options} --threads {threads}"
        " --checkpoint {params.checkpoint:q}"
        " --out-model {output.model:q} --out-epochs {output.epochs:q} --out-final {output.final:q}"
        " > {log:q} 2>&1"


rule analysis_membership:
    # Written from the config alone, like membership.json.
    output:
        membership=PATHS.analysis_membership,
    log:
        log_of("analysis_membership", "analyses"),
    benchmark:
        benchmark_of("analysis_membership", "analyses")
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        config=as_json(get_analysis_membership_config()),
        results=lambda wildcards, output: os.path.dirname(output.membership),
    shell:
        "backdoor-eval analysis-membership --config-json {params.config:q} --results-dir {params.results:q}"
        " --out {output.membership:q} > {log:q} 2>&1"


rule aggregate_detections:
    input:
        results=get_detection_results,
        membership=PATHS.analysis_membership,
    output:
        detections=PATHS.detections_table,
    log:
        log_of("aggregate_detections", "detections"),
    benchmark:
        benchmark_of("aggregate_detections", "detections")
    conda:
        "../../envs/backdoor-eval.yaml"
    shell:
        "backdoor-eval aggregate-detections --membership {input.membership:q} --out {output.detections:q} > {log:q} 2>&1"


rule aggregate_defenses:
    input:
        phases=get_filtered_results,
        membership=PATHS.analysis_membership,
    output:
        defenses=PATHS.defenses_table,
        epochs=PATHS.defense_epochs_table,
    log:
        log_of("aggregate_defenses", "defenses"),
    benchmark:
        benchmark_of("aggregate_defenses", "defenses")
    conda:
        "../../envs/backdoor-eval.yaml"
    shell:
        "backdoor-eval aggregate-defenses --membership {input.membership:q} --out {output.defenses:q}"
        " --out-epochs {output.epochs:q} > {log:q} 2>&1"


rule detection_table:
    input:
        detections=PATHS.detections_table,
    output:
        csv=PATHS.table(analysis_plan.DETECTION_TABLE, "csv"),
        md=report(
            PATHS.table(analysis_plan.DETECTION_TABLE, "md"), caption="../report/detection.rst", category="Detection"
        ),
    log:
        log_of("table", analysis_plan.DETECTION_TABLE),
    benchmark:
        benchmark_of("table", analysis_plan.DETECTION_TABLE)
    conda:
        "../../envs/backdoor-eval.yaml"
    shell:
        "backdoor-eval detection-table --detections {input.detections:q}"
        " --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule defense_table:
    input:
        defenses=PATHS.defenses_table,
        runs=PATHS.runs_table,
    output:
        csv=PATHS.table(analysis_plan.DEFENSE_TABLE, "csv"),
        md=report(
            PATHS.table(analysis_plan.DEFENSE_TABLE, "md"), caption="../report/detection.rst", category="Detection"
        ),
    log:
        log_of("table", analysis_plan.DEFENSE_TABLE),
    benchmark:
        benchmark_of("table", analysis_plan.DEFENSE_TABLE)
    conda:
        "../../envs/backdoor-eval.yaml"
    shell:
        "backdoor-eval defense-table --defenses {input.defenses:q} --runs {input.runs:q}"
        " --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule detection_figure:
    input:
        detections=PATHS.detections_table,
    output:
        png=report(PATHS.figure("{figure}", "png"), caption="../report/detection.rst", category="Detection"),
        pdf=PATHS.figure("{figure}", "pdf"),
    log:
        log_of("figure", "{figure}"),
    benchmark:
        benchmark_of("figure", "{figure}")
    wildcard_constraints:
        figure=one_of(DETECTION_FIGURES),
    conda:
        "../../envs/backdoor-eval.yaml"
    params:
        experiment=lambda wildcards: DETECTION_FIGURES[wildcards.figure][0],
        factor=lambda wildcards: DETECTION_FIGURES[wildcards.figure][1],
    shell:
        "backdoor-eval detection-figure --detections {input.detections:q} --experiment {params.experiment:q}"
        " --factor {params.factor} --out-png {output.png:q} --out-pdf {output.pdf:q} > {log:q} 2>&1"
