# Config -> targets. The grid logic lives in backdoor_eval.experiments, the file
# layout in backdoor_eval.layout and the checks before any job in
# backdoor_eval.preflight (pure, unit-tested); this file maps them onto
# wildcards, input functions (get_*) and command-line arguments.
import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import sys

from snakemake.logging import logger

from backdoor_eval import configview as cv
from backdoor_eval import experiments as ex
from backdoor_eval import gpus, names, offline, preflight, pretrain, seeding, triggers
from backdoor_eval.analyses.plan import without_analysis_keys as analysis_experiment_keys_removed
from backdoor_eval.factors import FACTORS, POISON_ID_TEMPLATE, WILDCARD_CONSTRAINTS, Run
from backdoor_eval.layout import RUN_WILDCARD, Layout

# The completed config (the Snakefile's prepare_config), typed and read-only: every input function reads it.
VIEW = cv.view(config)

# Every job reads files only: the hub offline and downloads off (backdoor_eval.offline.OFFLINE_ENV);
# the fetch rules (fetch.smk), which run first on the submitting node, alone turn the network back
# on (docs/workflow.md#offline-compute-nodes). Set in the shell prefix rather than in each rule's
# command, whose change would make Snakemake rerun the jobs that finished before. Bash's strict
# mode, Snakemake's default prefix, is kept.
SHELL_PREFIX = "set -euo pipefail; export " + " ".join(f"{k}={v}" for k, v in offline.OFFLINE_ENV.items()) + "; "
# GPU slots per device for the train/retrain jobs (backdoor_eval.gpus), the same way: a changed
# jobs_per_gpu leaves the finished jobs alone.
SHELL_PREFIX += f"export {gpus.JOBS_PER_GPU_ENV}={int(VIEW.jobs_per_gpu)}; "
# Jobs call `backdoor-eval`; under an unactivated virtualenv (.venv/bin/snakemake)
# it sits beside the running interpreter but not on PATH.
if shutil.which("backdoor-eval") is None:
    SHELL_PREFIX += f"PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; "
shell.prefix(SHELL_PREFIX)

RESULTS = f"results/{VIEW.name}"
PATHS = Layout(RESULTS)
EXPERIMENTS = ex.expand(VIEW)
RUNS = ex.union(EXPERIMENTS)
RUN_OF = {run.run_id: run for run in RUNS}
RETRAIN_RUN_IDS = {run.run_id for run in ex.retrain_runs(VIEW, EXPERIMENTS)}
OUTPUTS = VIEW.outputs
RETRAINING_TABLES = [name for name in names.RETRAINING_TABLES if name in OUTPUTS]
EXPERIMENT_TABLES = [name for name in names.EXPERIMENT_TABLES if name in OUTPUTS]
FIGURES = [name for name in names.FIGURES if name in OUTPUTS]
POISON_PHASE, CLEAN_PHASE = names.POISON_PHASE, names.CLEAN_PHASE
GPU_LOCK_DIR = VIEW.gpu_lock_dir
# The pretrainings the runs' models start from (init:), by their backbone file (backdoor_eval.pretrain).
PRETRAININGS = {
    pretrain.pretraining_file(VIEW, name): name
    for name in sorted({VIEW.model(run.model).init for run in RUNS} - {None})
}
INGESTED_DATASETS = (
    {run.dataset for run in RUNS}
    | {block["dataset"] for block in (VIEW.table1, VIEW.gallery) if block}
    | {VIEW.pretraining[name].dataset for name in PRETRAININGS.values()}
)
# What the fetch rules download before any compute job (backdoor_eval.offline): each model's
# (weights file, fetch or None; a pretrain rule's file for init:) and each dataset's archive.
MODEL_WEIGHTS = {model: pretrain.model_weights(VIEW, model) for model in sorted({run.model for run in RUNS})}
WEIGHTS_TO_FETCH = offline.weights_to_fetch(VIEW, MODEL_WEIGHTS)
ARCHIVE_OF = offline.archives_to_fetch(VIEW, INGESTED_DATASETS)
ARCHIVE_DATASET = {}  # archive -> the (first) dataset that reads it
for _dataset, _archive in sorted(ARCHIVE_OF.items()):
    ARCHIVE_DATASET.setdefault(_archive, _dataset)


# Before any job (a dry run too), checks and warnings from backdoor_eval.preflight (tested there):
# device: cuda where no GPU is visible is a warning (a head node may have none); a run that would
# poison no image is an error where the class sizes are known; finished poison phases that must train
# again because their model.pt was deleted are announced, not first seen on the GPU bill.
if workflow.is_main_process:
    for message in (
        preflight.cuda_warning(VIEW.device),
        preflight.rebuilt_splits_warning(VIEW, PATHS, RUNS),
        preflight.retraining_warning(PATHS, RETRAIN_RUN_IDS),
    ):
        if message:
            logger.warning(message)
    preflight.check_poison_counts(VIEW, PATHS, EXPERIMENTS)
    preflight.check_results_writable(PATHS)


# Every wildcard is constrained by the factors' declarations (backdoor_eval.factors): {run} is a
# run id, the others a poisoned set's factors and its split.
wildcard_constraints:
    **WILDCARD_CONSTRAINTS,


onerror:
    # A stopped workflow is not a failed one (backdoor_eval.preflight.interrupted_message).
    _logs = log if isinstance(log, (list, tuple)) else [log]  # Snakemake gives the log file(s)
    _text = "".join(open(path).read() for path in _logs if path and os.path.exists(str(path)))
    if _message := preflight.interrupted_message(_text):
        logger.warning(_message)


onstart:
    logger.info(f"backdoor-eval config {VIEW.name}:\n{ex.format_counts(VIEW)}")
    # Phases still running elsewhere (a killed run's orphans), and the half-written files of killed jobs.
    for level, message in preflight.clean_up(PATHS):
        getattr(logger, level)(message)


def get_final_output():
    """The targets: the tidy results and the tables/figures the config supports."""
    targets = [PATHS.runs_table, PATHS.epochs_table]
    if VIEW.table1:
        targets += [PATHS.table("table1", ext) for ext in ("csv", "md")]
    for name in RETRAINING_TABLES:
        targets += [PATHS.table(stem, ext) for stem in (name, f"{name}_n") for ext in ("csv", "md")]
    for name in EXPERIMENT_TABLES:
        targets += [PATHS.table(name, ext) for ext in ("csv", "md")]
    for name in FIGURES + (["fig2"] if VIEW.gallery else []):
        targets += [PATHS.figure(name, ext) for ext in ("png", "pdf")]
    if "retraining_budget" in OUTPUTS:
        targets += [PATHS.table("retraining_budget", ext) for ext in ("csv", "md")]
        targets += [PATHS.figure("retraining_curves", ext) for ext in ("png", "pdf")]
    return targets


def as_json(value):
    return json.dumps(value, sort_keys=True)


def one_of(names):
    """A wildcard constraint matching exactly ``names``."""
    return "|".join(names) if names else "(?!)"


def exactly(strings):
    """A wildcard constraint matching exactly ``strings`` (file paths: escaped)."""
    strings = sorted(strings)
    return "|".join(map(re.escape, strings)) if strings else "(?!)"


def model_file(path):
    """Model weights are big (ResNet-50 ~95 MB, NASNet-A Large ~350 MB): temporary unless keep_models."""
    return path if VIEW.keep_models else temp(path)


def job_resource(rule_name, key):
    """A train/retrain job resource; the schema fills every default."""
    return VIEW.resources[rule_name][key]


def log_of(rule_name, pattern):
    return PATHS.log(rule_name, pattern)


def benchmark_of(rule_name, pattern):
    return PATHS.benchmark(rule_name, pattern)


# ---------------------------------------------------------------- fetch


def get_fetch_weights_options(wildcards):
    """`backdoor-eval fetch-weights` arguments of one weights file: the model and, for a URL, the source."""
    fetch = WEIGHTS_TO_FETCH[f"{offline.WEIGHTS_DIR}/{wildcards.weights}"]
    return shlex.join(["--model", fetch.arch] + (["--source", fetch.source] if fetch.source else []))


def get_fetched_dataset_kind(wildcards):
    return VIEW.datasets[ARCHIVE_DATASET[wildcards.archive]].kind


def get_fetched_dataset_params(wildcards):
    return as_json(cv.thaw(VIEW.datasets[ARCHIVE_DATASET[wildcards.archive]].params))


# ---------------------------------------------------------------- pretrain


def get_pretraining(wildcards):
    """The pretraining entry whose backbone file is being made."""
    return PRETRAININGS[f"{pretrain.PRETRAINED_DIR}/{wildcards.pretraining}.safetensors"]


def get_pretrain_store(wildcards):
    return {"store": PATHS.store.format(dataset=VIEW.pretraining[get_pretraining(wildcards)].dataset)}


def get_pretrain_options(wildcards):
    """`backdoor-eval pretrain` arguments of one pretraining entry, shell-quoted."""
    name = get_pretraining(wildcards)
    spec = VIEW.pretraining[name]
    options = [
        "--name",
        name,
        "--model",
        spec.arch,
        "--model-params",
        as_json(cv.thaw(spec.params)),
        "--train-params",
        as_json(cv.thaw(spec.train)),
        "--seed",
        str(spec.seed),
        "--holdout",
        str(spec.holdout),
        "--device",
        VIEW.device,
        "--checkpoint",
        f"{PATHS.checkpoint_root}/pretrain/{wildcards.pretraining}.pt",
    ]
    if GPU_LOCK_DIR:
        options += ["--gpu-lock-dir", GPU_LOCK_DIR]
    return shlex.join(options)


# ---------------------------------------------------------------- data


def get_ingest_input(wildcards):
    """The archive fetch_dataset downloaded, for a dataset whose reader downloads one; else nothing."""
    archive = ARCHIVE_OF.get(wildcards.dataset)
    return {"archive": archive} if archive else {}


def get_dataset_kind(wildcards):
    return VIEW.datasets[wildcards.dataset].kind


def get_dataset_params(wildcards):
    return as_json(cv.thaw(VIEW.datasets[wildcards.dataset].params))


def get_dataset_classes(wildcards):
    return as_json(VIEW.dataset_classes(wildcards.dataset))


def get_fit_options(kind):
    """`backdoor-eval fit-<kind>` options of a fitted trigger: its fit parameters in the config."""
    return shlex.join(VIEW.fit_options(kind))


# ---------------------------------------------------------------- poison


def get_poison_input(wildcards):
    """Store and partitions of the split; a fitted trigger (lv) also needs the split's fit (lv_fit)."""
    inputs = {
        "store": PATHS.store.format(dataset=wildcards.dataset),
        "partitions": PATHS.partitions.format(dataset=wildcards.dataset, split=wildcards.split),
    }
    trigger = VIEW.trigger(wildcards.trigger)
    if trigger.needs_fit:
        kind = trigger.kind
        inputs[names.fit_name(kind)] = PATHS.trigger_fit(kind).format(dataset=wildcards.dataset, split=wildcards.split)
    return inputs


def get_poison_options(wildcards, input):
    """The trigger (its registry name and parameters) and the optional arguments of `backdoor-eval poison`."""
    trigger = VIEW.trigger(wildcards.trigger)
    kind = trigger.kind
    options = ["--trigger", kind, "--trigger-params", as_json(trigger.trigger_params())]
    if names.fit_name(kind) in input.keys():
        options += [names.fit_option(kind), input[names.fit_name(kind)]]
    if wildcards.strategy == names.ONE_TO_ONE:
        options += ["--source", wildcards.source]
    return shlex.join(options)


# ---------------------------------------------------------------- train


def run_of(wildcards):
    """The run a job's ``{run}`` wildcard names."""
    return RUN_OF.get(wildcards.run) or Run.from_run_id(wildcards.run)


def get_run_data(wildcards):
    """The data a run trains on: the store, its split's partitions and its poisoned overlay."""
    run = run_of(wildcards)
    return {
        "store": PATHS.store.format(dataset=run.dataset),
        "partitions": PATHS.partitions.format(dataset=run.dataset, split=VIEW.split_of(run)),
        "poisoned": f"{RESULTS}/poison/{VIEW.poison_id(run)}",
    }


def get_model_weights(wildcards):
    """The pretrained weights file a run's model starts from (fetched, or the config's local file); none
    when it is not pretrained. An input of train: Snakemake names it when it is missing."""
    weights, _ = MODEL_WEIGHTS[run_of(wildcards).model]
    return {"weights": weights} if weights else {}


def get_train_options(wildcards):
    """Model, regularizer, training and seed arguments of `backdoor-eval train/retrain`, shell-quoted.

    One function for all of them: Snakemake inspects and calls each params
    function once per job, which is most of a dry run's time on the paper grid.
    """
    run = run_of(wildcards)
    arch, model_params = VIEW.model_spec(run.model)
    train = train_settings(run)
    weights, fetch = MODEL_WEIGHTS[run.model]
    if fetch is not None:
        model_params["weights"] = weights  # the file fetch_weights wrote, not the hub or a URL
    if weights in PRETRAININGS:
        model_params.update(pretrained=True, weights=weights)  # the pretrain rule's backbone, a new head
    options = [
        "--model",
        arch,
        "--model-params",
        as_json(model_params),
        "--regularizer",
        run.regularizer,
        "--regularizer-params",
        as_json(VIEW.regularizer_params(run.regularizer)),
        "--train-params",
        as_json(train),
        "--device",
        VIEW.device,
        "--seed",
        str(run.seed),
    ]
    if GPU_LOCK_DIR:
        options += ["--gpu-lock-dir", GPU_LOCK_DIR]
    if train["compile"]:  # TrainConfig.compile is off unless a train block sets it
        options += ["--compile-cache-dir", PATHS.compile_cache]
    return shlex.join(options)


@functools.cache
def train_settings(run):
    """Every training setting of `run`, defaults included: a job's params change (and Snakemake reruns
    it) when a setting changes, in the config or as a code default, and only then; writing a default out
    (`augment: none`) changes nothing (README.md: Results and code changes)."""
    from backdoor_eval.train import TrainConfig

    return dataclasses.asdict(TrainConfig.from_dict(VIEW.run_train_params(run)))


def get_checkpoint(phase):
    """The phase's resumable checkpoint file (not a declared output: it must survive a failed attempt)."""
    return f"{PATHS.checkpoints}/{phase}.pt"


# ---------------------------------------------------------------- summarize and report


def get_summarize_input(wildcards):
    """The poison phase's results, plus the clean phase's for runs an experiment retrains."""
    run_id = run_of(wildcards).run_id
    inputs = {
        "poison_final": PATHS.phase_file(POISON_PHASE, "final", run_id),
        "poison_epochs": PATHS.phase_file(POISON_PHASE, "epochs", run_id),
    }
    if run_id in RETRAIN_RUN_IDS:
        inputs["clean_final"] = PATHS.phase_file(CLEAN_PHASE, "final", run_id)
        inputs["clean_epochs"] = PATHS.phase_file(CLEAN_PHASE, "epochs", run_id)
    return inputs


def get_summarize_options(wildcards, input):
    """The run parameters (as its run id spells them: a factor added later only off its default, so runs
    summarized before it existed are not redone) and, for retrained runs, the clean phase's files, shell-quoted."""
    run = run_of(wildcards)
    options = ["--run-params", as_json({"run_id": run.run_id, **run.identity()})]
    if "clean_final" in input.keys():
        options += ["--clean-final", input.clean_final, "--clean-epochs", input.clean_epochs]
    return shlex.join(options)


def get_membership_config():
    """The parts of the config membership depends on (so training settings do not re-run it)."""
    # The names each factor's section declares (models, regularizers, optimizers, any factor added
    # to backdoor_eval.factors), with the classes of each dataset and the triggers' alpha defaults.
    declared = {
        factor.section: {name: {} for name in config[factor.section] or {}}
        for factor in FACTORS
        if factor.section and factor.section in config
    }
    return {
        "name": config["name"],
        **declared,
        "datasets": {name: {"classes": spec["classes"]} for name, spec in config["datasets"].items()},
        "triggers": config.get("triggers"),
        # Without the analyses' keys: adding an analysis does not rebuild runs.parquet.
        "experiments": analysis_experiment_keys_removed(config["experiments"]),
        "outputs": config.get("outputs"),
    }


def get_run_results(wildcards):
    """Every run's summary and epochs files: exactly the files the membership document lists."""
    return {
        "summaries": [PATHS.run_summary(run.run_id) for run in RUNS],
        "epochs": [PATHS.run_epochs(run.run_id) for run in RUNS],
    }


def get_output_experiments(wildcards):
    """The experiments a table or figure is built from, as "E1+E2"."""
    return "+".join(OUTPUTS[wildcards.get("table") or wildcards.get("figure")])


def get_table1_options():
    spec = VIEW.table1
    options = ["--poison-rate", str(spec["poison_rate"])]
    if spec.get("class_counts"):
        options += ["--class-counts", ",".join(map(str, spec["class_counts"]))]
    return shlex.join(options)


def get_gallery_fits():
    """The fit files of the fitted triggers Fig. 2 shows (lv: its lv_fit), made on the seed's shared split."""
    spec = VIEW.gallery
    split = seeding.split_id(spec["seed"])
    triggers = [VIEW.trigger(name) for name in VIEW.trigger_names]
    kinds = dict.fromkeys(trigger.kind for trigger in triggers if trigger.needs_fit)
    return {kind: PATHS.trigger_fit(kind).format(dataset=spec["dataset"], split=split) for kind in kinds}


def get_gallery_input():
    """One image of the seed's shared split, and that split's fits of the fitted triggers shown."""
    spec = VIEW.gallery
    split = seeding.split_id(spec["seed"])
    return {
        "store": PATHS.store.format(dataset=spec["dataset"]),
        "partitions": PATHS.partitions.format(dataset=spec["dataset"], split=split),
        **{names.fit_name(kind): path for kind, path in get_gallery_fits().items()},
    }


def get_gallery_options():
    """The fit files, the image and the triggers of Fig. 2, each at the alpha and with the parameters the
    config gives it."""
    triggers = [VIEW.trigger(name) for name in VIEW.trigger_names]
    shown = {
        trigger.name: {"kind": trigger.kind, "alpha": trigger.default_alpha, "params": trigger.trigger_params()}
        for trigger in triggers
    }
    options = [part for kind, path in get_gallery_fits().items() for part in (names.fit_option(kind), path)]
    # In the config's order (the panels' order); the gallery's seed places the random square.
    options += ["--triggers", json.dumps(shown), "--seed", str(VIEW.gallery["seed"])]
    index = VIEW.gallery.get("image_index")
    if index is not None:
        options += ["--image-index", str(index)]
    return shlex.join(options)
