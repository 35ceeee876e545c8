# Config -> targets. The grid logic lives in backdoor_eval.experiments (pure,
# unit-tested); this file only maps it onto paths, wildcards and arguments.
import json
import os
import shlex
import shutil
import sys

from snakemake.logging import logger

from backdoor_eval import experiments as ex

# Jobs call `backdoor-eval`; under an unactivated virtualenv (.venv/bin/snakemake)
# it sits beside the running interpreter but not on PATH.
if shutil.which("backdoor-eval") is None:
    shell.prefix(f"PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; ")

# What the schema cannot check (names, classes, alpha/rate ranges), before any job.
ex.validate(config)

RESULTS = f"results/{config['name']}"
EXPERIMENTS = ex.expand(config)
RUNS = ex.union(EXPERIMENTS)
RETRAIN_RUN_IDS = {run.run_id for run in ex.retrain_runs(config, EXPERIMENTS)}
OUTPUTS = ex.outputs(config)
TABLES = [name for name in ("table2", "table3", "table4", "table5") if name in OUTPUTS]
FIGURES = [name for name in ("fig4", "fig5", "fig6", "fig7") if name in OUTPUTS]
if config.get("table1"):
    TABLES.insert(0, "table1")

# Path patterns; RUN and POISON are the results contract's run_id and overlay key.
RUN = ex.RUN_ID_TEMPLATE
POISON = ex.POISON_ID_TEMPLATE
STORE = f"{RESULTS}/data/{{dataset}}/store"
PARTITIONS = f"{RESULTS}/data/{{dataset}}/seed{{seed}}/partitions.npz"
LV_FIT = f"{RESULTS}/data/{{dataset}}/seed{{seed}}/lv_fit.npz"
POISONED = f"{RESULTS}/poison/{POISON}"
RUN_DIR = f"{RESULTS}/runs/{RUN}"
# Resumable-training state; deliberately not a declared output (it must survive a failed attempt).
CHECKPOINTS = f"{RESULTS}/checkpoints/{RUN}"
GPU_LOCK_DIR = config.get("gpu_lock_dir")


wildcard_constraints:
    dataset=ex.WILDCARD_CONSTRAINTS["dataset"],
    model=ex.WILDCARD_CONSTRAINTS["model"],
    trigger=ex.WILDCARD_CONSTRAINTS["trigger"],
    alpha=ex.WILDCARD_CONSTRAINTS["alpha"],
    strategy=ex.WILDCARD_CONSTRAINTS["strategy"],
    poison_class=ex.WILDCARD_CONSTRAINTS["poison_class"],
    source=ex.WILDCARD_CONSTRAINTS["source"],
    poison_rate=ex.WILDCARD_CONSTRAINTS["poison_rate"],
    regularizer=ex.WILDCARD_CONSTRAINTS["regularizer"],
    seed=ex.WILDCARD_CONSTRAINTS["seed"],


onstart:
    logger.info(f"backdoor-eval config {config['name']}:\n{ex.format_counts(config)}")


def get_final_output():
    """The targets: the tidy results and the tables/figures the config supports."""
    targets = [f"{RESULTS}/runs.parquet", f"{RESULTS}/epochs.parquet"]
    targets += table_files() + figure_files() + gallery_files()
    return targets


def table_files():
    return [
        f"{RESULTS}/tables/{name}.{ext}" for name in TABLES for ext in ("csv", "md")
    ]


def figure_files():
    return [
        f"{RESULTS}/figures/{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")
    ]


def gallery_files():
    if not config.get("gallery"):
        return []
    return [f"{RESULTS}/figures/fig2.png", f"{RESULTS}/figures/fig2.pdf"]


def model_file(path):
    """Model weights are big (ResNet-50 ~95 MB, NASNet-A Large ~350 MB): temporary unless keep_models."""
    return path if config["keep_models"] else temp(path)


def as_json(value):
    return json.dumps(value, sort_keys=True)


def run_of(wildcards):
    return ex.Run.from_mapping(wildcards)


def job_resource(rule_name, key, default):
    return (config.get("resources") or {}).get(rule_name, {}).get(key, default)


# ---------------------------------------------------------------- data


def dataset_kind(wildcards):
    return config["datasets"][wildcards.dataset]["kind"]


def dataset_params(wildcards):
    return as_json(config["datasets"][wildcards.dataset].get("params") or {})


def dataset_classes(wildcards):
    return as_json(ex.dataset_classes(config, wildcards.dataset))


# ---------------------------------------------------------------- poison


def poison_input(wildcards):
    """Store and partitions; the lv trigger also needs the split's PCA fit."""
    inputs = {
        "store": STORE.format(dataset=wildcards.dataset),
        "partitions": PARTITIONS.format(dataset=wildcards.dataset, seed=wildcards.seed),
    }
    if wildcards.trigger == "lv":
        inputs["lv_fit"] = LV_FIT.format(dataset=wildcards.dataset, seed=wildcards.seed)
    return inputs


def poison_options(wildcards):
    """The optional arguments of `backdoor-eval poison`, shell-quoted."""
    options = [
        "--trigger-params",
        as_json(ex.trigger_params(config, wildcards.trigger)),
    ]
    if wildcards.trigger == "lv":
        options += [
            "--lv-fit",
            LV_FIT.format(dataset=wildcards.dataset, seed=wildcards.seed),
        ]
    if wildcards.strategy == "one-to-one":
        options += ["--source", wildcards.source]
    return shlex.join(options)


# ---------------------------------------------------------------- train


def train_options(wildcards):
    """Model, regularizer and training arguments of `backdoor-eval train/retrain`, shell-quoted.

    One function for all of them: Snakemake inspects and calls each params
    function once per job, which is most of a dry run's time on the paper grid.
    """
    arch, model_params = ex.model_spec(config, wildcards.model)
    return shlex.join(
        [
            "--model",
            arch,
            "--model-params",
            as_json(model_params),
            "--regularizer",
            wildcards.regularizer,
            "--regularizer-params",
            as_json(ex.regularizer_params(config, wildcards.regularizer)),
            "--train-params",
            as_json(ex.train_params(config, wildcards.dataset, wildcards.model)),
        ]
    )


def gpu_option():
    return shlex.join(["--gpu-lock-dir", GPU_LOCK_DIR]) if GPU_LOCK_DIR else ""


# ---------------------------------------------------------------- evaluate and report


def evaluate_input(wildcards):
    """The poison phase's results, plus the clean phase's for runs an experiment retrains."""
    run_id = run_of(wildcards).run_id
    run_dir = f"{RESULTS}/runs/{run_id}"
    inputs = {
        "poison_final": f"{run_dir}/poison/final.json",
        "poison_epochs": f"{run_dir}/poison/epochs.parquet",
    }
    if run_id in RETRAIN_RUN_IDS:
        inputs.update(
            clean_final=f"{run_dir}/clean/final.json",
            clean_epochs=f"{run_dir}/clean/epochs.parquet",
        )
    return inputs


def evaluate_options(wildcards):
    """``--clean DIR`` for retrained runs, and the run parameters, shell-quoted."""
    run = run_of(wildcards)
    options = ["--run-params", as_json({"run_id": run.run_id, **run.params()})]
    if run.run_id in RETRAIN_RUN_IDS:
        options += ["--clean", f"{RESULTS}/runs/{run.run_id}/clean"]
    return shlex.join(options)


def membership_config():
    """The parts of the config membership depends on (so training settings do not re-run it)."""
    return {
        "name": config["name"],
        "datasets": {
            name: {"classes": spec["classes"]}
            for name, spec in config["datasets"].items()
        },
        "models": {name: {} for name in config["models"]},
        "triggers": config.get("triggers"),
        "regularizers": {name: {} for name in config.get("regularizers") or {}},
        "experiments": config["experiments"],
        "outputs": config.get("outputs"),
    }


def run_results():
    return [
        f"{RESULTS}/runs/{run.run_id}/{name}"
        for run in RUNS
        for name in ("summary.parquet", "epochs.parquet")
    ]


def table1_input():
    if not config.get("table1"):
        return {}
    return {"table1_store": STORE.format(dataset=config["table1"]["dataset"])}


def table1_options(wildcards, input):
    if not config.get("table1"):
        return ""
    options = [
        "--table1-store",
        input.table1_store,
        "--table1-rate",
        str(config["table1"]["poison_rate"]),
    ]
    if config["table1"].get("class_counts"):
        options += ["--table1-counts", ",".join(map(str, config["table1"]["class_counts"]))]
    return shlex.join(options)


def gallery_input():
    spec = config["gallery"]
    return {
        "store": STORE.format(dataset=spec["dataset"]),
        "partitions": PARTITIONS.format(dataset=spec["dataset"], seed=spec["seed"]),
        "lv_fit": LV_FIT.format(dataset=spec["dataset"], seed=spec["seed"]),
    }


def gallery_options():
    index = config["gallery"].get("image_index")
    return "" if index is None else shlex.join(["--image-index", str(index)])
