"""The project's shared vocabulary: every name that more than one module spells.

Strategy, phase and partition names and the names of the paper's outputs
live here once (the run factors are declared in ``backdoor_eval.factors``) and are imported everywhere
else (the package, the Snakemake rules, the tests). This module imports
nothing, so the Snakefile can read it at parse time on every cluster job.
"""

from __future__ import annotations

# Poisoning strategies (paper section 2.5; docs/decisions.md#poison-sampling).
MANY_TO_ONE = "many-to-one"
ONE_TO_ONE = "one-to-one"
STRATEGIES = (MANY_TO_ONE, ONE_TO_ONE)
# Factor values meaning every class: as poison_class, each class in turn; as
# source, every class but the poison class (also a many-to-one run's source).
ALL_CLASSES = "all"
OTHER_CLASSES = "others"

# Training phases: train on the poisoned set, then fine-tune on clean data.
POISON_PHASE = "poison"
CLEAN_PHASE = "clean"
PHASES = (POISON_PHASE, CLEAN_PHASE)


# A fitted trigger's fit (backdoor_eval.triggers.TriggerFit), named after the trigger's registry name.
def fit_name(kind: str) -> str:
    """What fitted trigger ``kind``'s fit is called: ``<kind>_fit`` is its file's stem (``lv_fit.npz``),
    the fit rule's output and the poison and gallery rules' input."""
    return f"{kind}_fit"


def fit_command(kind: str) -> str:
    """The command making trigger ``kind``'s fit (``backdoor-eval fit-lv``, run by the rule ``fit_lv``)."""
    return f"fit-{kind}"


def fit_option(kind: str) -> str:
    """The poison and gallery commands' option giving trigger ``kind``'s fit file (``--lv-fit``)."""
    return "--" + fit_name(kind).replace("_", "-")


# The five partitions of a split (docs/decisions.md#partitions), in file order.
PARTITIONS = ("poison_train", "poison_val", "clean_train", "clean_val", "adv_test")
POISONED_PARTITIONS = ("poison_train", "poison_val")
CLEAN_PARTITIONS = ("clean_train", "clean_val")

# How runs get their data split (docs/decisions.md#partitions): each run its
# own split and poison draws (the paper's section 3), or one split per seed
# shared by every run of that seed (paired comparisons).
PER_RUN_SPLIT = "per-run"
SHARED_SPLIT = "shared"
SPLIT_POLICIES = (PER_RUN_SPLIT, SHARED_SPLIT)

# No regularizer: plain cross-entropy.
NO_REGULARIZER = "none"

# The paper's outputs built from runs (Table 1 and Fig. 2 come from data alone).
# Tables 2-3 compare before and after clean retraining, 4-5 the poisoning strategies.
RETRAINING_TABLES = ("table2", "table3")
STRATEGY_TABLES = ("table4", "table5")
# Beyond the paper: the optimizer factor's table and figure (its future work).
OPTIMIZER_TABLE, OPTIMIZER_FIGURE = "table_optimizer", "fig_optimizer"
# Tables built from one experiment each.
EXPERIMENT_TABLES = (*STRATEGY_TABLES, OPTIMIZER_TABLE)
TABLES = (*RETRAINING_TABLES, *EXPERIMENT_TABLES)
FIGURES = ("fig4", "fig5", "fig6", "fig7", OPTIMIZER_FIGURE)
# Beyond the paper's outputs: clean retraining epoch by epoch (a table and a figure from epochs.parquet).
EPOCH_OUTPUTS = ("retraining_budget",)
OUTPUTS = (*TABLES, *FIGURES, *EPOCH_OUTPUTS)
# How a config names the experiments an output is built from: "E1+E2".
EXPERIMENT_SEPARATOR = "+"


def experiment_list(value: object) -> list[str]:
    """Experiment names from ``"E1+E2"``, ``["E1", "E2"]`` or ``None`` (-> ``[]``)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(EXPERIMENT_SEPARATOR) if part.strip()]
    return [str(item) for item in value]  # type: ignore[union-attr]


def check_output_experiment_count(output: str, experiments: list[str], where: str) -> None:
    """Tables 2 and 3 take one or more experiments (each fills the halves it has phases for); every
    other table and figure exactly one. A ``ValueError`` starting with ``where`` otherwise."""
    if output in RETRAINING_TABLES:
        if not experiments:
            raise ValueError(f"{where}; allowed: one or more experiment names joined by '+' (e.g. 'E1+E2')")
    elif len(experiments) != 1:
        raise ValueError(f"{where}; allowed: one experiment name (e.g. 'E3')")
