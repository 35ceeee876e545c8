# Config -> targets of the analyses (docs/detection.md; rules in analyze.smk). The plan lives in
# backdoor_eval.analyses.plan (pure, unit-tested); this file maps it onto input functions (get_*).
from backdoor_eval.analyses import ANALYSES, TRAINING_SET
from backdoor_eval.analyses import plan as analysis_plan

ANALYSIS_JOBS = analysis_plan.jobs(config, EXPERIMENTS)
DETECTORS = [name for name in ANALYSES.names() if ANALYSES.get(name).kind == TRAINING_SET]
DETECTION_FIGURES = analysis_plan.detection_figures(config, OUTPUTS)
FILTERED_RUN = analysis_plan.filtered_run_id(RUN_WILDCARD, "{method}")
ANALYSIS_JOB = f"{RUN_WILDCARD}/{{method}}"  # one run and method: the analyze rule's log and benchmark

# Before any job: labels too small for a detector (where the class sizes are known), and finished
# poison phases whose model.pt was deleted (keep_models: false) that an analysis now needs.
if workflow.is_main_process and ANALYSIS_JOBS["analyze"]:
    analysis_plan.check_label_sizes(config, preflight.known_class_counts(VIEW, PATHS), EXPERIMENTS)
    if AGAIN_FOR_ANALYSES := analysis_plan.models_deleted(PATHS, ANALYSIS_JOBS["analyze"]):
        logger.warning(
            f"{len(AGAIN_FOR_ANALYSES)} finished poison phase(s) will be trained again, because analyses now need "
            f"their model.pt, deleted after training (keep_models: false); e.g. {AGAIN_FOR_ANALYSES[0]}. "
            "Set keep_models: true before a later change adds analyses to keep them."
        )


def get_analysis_output():
    """detections.parquet with its table and figures, and defenses.parquet (with every epoch in
    defense_epochs.parquet) with its table, when asked for."""
    targets = []
    if analysis_plan.experiment_methods(config):
        targets += [PATHS.detections_table]
        targets += [PATHS.table(analysis_plan.DETECTION_TABLE, ext) for ext in ("csv", "md")]
        targets += [PATHS.figure(name, ext) for name in DETECTION_FIGURES for ext in ("png", "pdf")]
    if analysis_plan.experiment_methods(config, analysis_plan.FILTER_KEY):
        targets += [PATHS.defenses_table, PATHS.defense_epochs_table]
        targets += [PATHS.table(analysis_plan.DEFENSE_TABLE, ext) for ext in ("csv", "md")]
    return targets


def get_analysis_input(wildcards):
    """The run's data, and its poison-phase model when the method reads one."""
    inputs = get_run_data(wildcards)
    if ANALYSES.get(wildcards.method).needs_model:
        inputs["model"] = PATHS.phase_file(POISON_PHASE, "model", run_of(wildcards).run_id)
    return inputs


def get_analysis_options(wildcards, input):
    """`backdoor-eval analyze` arguments: the method and its parameters, the run, and how to feed its model."""
    run = run_of(wildcards)
    options = [
        "--method",
        wildcards.method,
        "--params",
        as_json(analysis_plan.method_params(config, wildcards.method)),
        "--run-params",
        as_json({"run_id": run.run_id, **run.params()}),
    ]
    if "model" in input.keys():
        arch, model_params = VIEW.model_spec(run.model)
        options += ["--model-file", input.model, "--model", arch, "--model-params", as_json(model_params)]
        options += ["--train-params", as_json(train_settings(run))]
        options += ["--device", VIEW.device]
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
    return {
        **get_membership_config(),
        "experiments": config["experiments"],  # with the analyses' keys, which membership.json leaves out
        "analyses": {name: {} for name in config.get("analyses") or {}},
    }
