# Analyses of trained runs (docs/detection.md): each method an experiment lists under `analyses:`
# runs once per run (rule analyze, one result file per run and method), filter-then-retrain trains
# each run again without what a detector flagged (rule filter_retrain), and the results are gathered
# like runs.parquet into detections.parquet and defenses.parquet, with their tables and figures.
# The analyze rule lists the run's model.pt as an input, so Snakemake keeps that temporary file
# (keep_models: false) until every analysis of the run has read it.
from backdoor_eval.analyses import ANALYSES, TRAINING_SET
from backdoor_eval.analyses import plan as analysis_plan

ANALYSIS_JOBS = analysis_plan.jobs(config, EXPERIMENTS)
DETECTORS = [name for name in ANALYSES.names() if ANALYSES.get(name).kind == TRAINING_SET]
DETECTION_FIGURES = analysis_plan.detection_figures(config, OUTPUTS)
FILTERED_RUN = analysis_plan.filtered_run_id(RUN_ID_TEMPLATE, "{method}")

# Before any job: labels too small for a detector (where the class sizes are known), and finished
# poison phases whose model.pt was deleted (keep_models: false) that an analysis now needs.
if workflow.is_main_process and ANALYSIS_JOBS["analyze"]:
    analysis_plan.check_label_sizes(config, known_class_counts(), EXPERIMENTS)
    if AGAIN_FOR_ANALYSES := analysis_plan.models_deleted(PATHS, ANALYSIS_JOBS["analyze"]):
        logger.warning(
            f"{len(AGAIN_FOR_ANALYSES)} finished poison phase(s) will be trained again, because analyses now need "
            f"their model.pt, deleted after training (keep_models: false); e.g. {AGAIN_FOR_ANALYSES[0]}. "
            "Set keep_models: true before a later change adds analyses to keep them."
        )


def get_analysis_output():
    """detections.parquet with its table and figures, and defenses.parquet with its table, when asked for."""
    targets = []
    if analysis_plan.experiment_methods(config):
        targets += [PATHS.detections_table]
        targets += [PATHS.table(analysis_plan.DETECTION_TABLE, ext) for ext in ("csv", "md")]
        targets += [PATHS.figure(name, ext) for name in DETECTION_FIGURES for ext in ("png", "pdf")]
    if analysis_plan.experiment_methods(config, analysis_plan.FILTER_KEY):
        targets += [PATHS.defenses_table]
        targets += [PATHS.table(analysis_plan.DEFENSE_TABLE, ext) for ext in ("csv", "md")]
    return targets


def get_analysis_input(wildcards):
    """The run's data, and its poison-phase model when the method reads one."""
    inputs = get_run_data(wildcards)
    if ANALYSES.get(wildcards.method).needs_model:
        inputs["model"] = PATHS.phase_file(POISON_PHASE, "model", ex.Run.from_mapping(wildcards).run_id)
    return inputs


def get_analysis_options(wildcards, input):
    """`backdoor-eval analyze` arguments: the method and its parameters, the run, and how to feed its model."""
    run = ex.Run.from_mapping(wildcards)
    options = [
        "--method",
        wildcards.method,
        "--params",
        as_json(analysis_plan.method_params(config, wildcards.method)),
        "--run-params",
        as_json({"run_id": run.run_id, **run.params()}),
    ]
    if "model" in input.keys():
        arch, model_params = ex.model_spec(config, wildcards.model)
        options += ["--model-file", input.model, "--model", arch, "--model-params", as_json(model_params)]
        options += ["--train-params", as_json(ex.train_params(config, wildcards.dataset, wildcards.model))]
        options += ["--device", config["device"]]
        if GPU_LOCK_DIR:
            options += ["--gpu-lock-dir", GPU_LOCK_DIR]
    return shlex.join(options)


def get_detection_results(wildcards):
    """The result file of every (run, method) an experiment's `analyses:` lists."""
    return [
        PATHS.analysis_file(method, "parquet", run.run_id)
        for methods, runs in (
            (methods, EXPERIMENTS[name]) for name, methods in analysis_plan.experiment_methods(config).items()
        )
        for run in runs
        for method in methods
    ]


def get_filtered_results(wildcards):
    """The final.json and epochs.parquet of every filter-then-retrain phase."""
    files = []
    for name, methods in analysis_plan.experiment_methods(config, analysis_plan.FILTER_KEY).items():
        for run in EXPERIMENTS[name]:
            for method in methods:
                filtered = analysis_plan.filtered_run_id(run.run_id, method)
                files += [PATHS.phase_file(POISON_PHASE, kind, filtered) for kind in ("final", "epochs")]
    return files


def get_analysis_membership_config():
    """What the analysis membership depends on: the membership's parts and the analyses' names."""
    return {**get_membership_config(), "analyses": {name: {} for name in config.get("analyses") or {}}}


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
        log_of("analyze", RUN_ID_TEMPLATE + "/{method}"),
    benchmark:
        benchmark_of("analyze", RUN_ID_TEMPLATE + "/{method}")
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
        " --exclude {input.exclude:q} {params.options} --seed {wildcards.seed} --threads {threads}"
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
    log:
        log_of("aggregate_defenses", "defenses"),
    benchmark:
        benchmark_of("aggregate_defenses", "defenses")
    conda:
        "../../envs/backdoor-eval.yaml"
    shell:
        "backdoor-eval aggregate-defenses --membership {input.membership:q} --out {output.defenses:q} > {log:q} 2>&1"


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
