"""Which analyses a config asks for, their parameters, their checks and their files (docs/detection.md).

An experiment opts in with two keys::

    E1:
      ...
      analyses: [spectral, activation_clustering, strip]      # one result per run and method
      filter_retrain: [spectral, perfect_filter]               # one training job per run and method

and the top-level ``analyses:`` block overrides a method's parameters
(``analyses: {spectral: {epsilon: 0.1}, strip: {num_blends: 20}}``).
:func:`validate` checks all of it before any job. Light (no torch): the
Snakefile calls it at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backdoor_eval.analyses.registry import ANALYSES, TRAINING_SET
from backdoor_eval.layout import Layout
from backdoor_eval.names import POISON_PHASE

# Experiment keys (the schema's): analyses to run, and training-set detectors to filter-then-retrain with.
ANALYSES_KEY = "analyses"
FILTER_KEY = "filter_retrain"
# Figures of detection, each built from the experiment of the paper figure whose factor it varies.
DETECTION_FIGURES = {
    "detection_rate": ("fig7", "poison_rate"),
    "detection_alpha": ("fig6", "alpha"),
    "detection_regularizer": ("fig4", "regularizer"),
}
DETECTION_TABLE = "detection"
DEFENSE_TABLE = "defense"


def experiment_methods(config: Mapping[str, Any], key: str = ANALYSES_KEY) -> dict[str, list[str]]:
    """Experiment -> the methods its ``key`` (``analyses`` or ``filter_retrain``) lists; experiments without it left out."""
    return {name: list(spec[key]) for name, spec in (config.get("experiments") or {}).items() if (spec or {}).get(key)}


def without_analysis_keys(experiments: Mapping[str, Any]) -> dict[str, Any]:
    """The experiments with their ``analyses`` and ``filter_retrain`` keys left out (what membership.json
    depends on: adding an analysis does not rebuild ``runs.parquet``)."""
    return {
        name: {key: value for key, value in (spec or {}).items() if key not in (ANALYSES_KEY, FILTER_KEY)}
        for name, spec in experiments.items()
    }


def method_params(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The method's parameters: its defaults updated with the config's ``analyses.<method>`` block."""
    return ANALYSES.get(method).check_params((config.get(ANALYSES_KEY) or {}).get(method) or {})


def validate(config: Mapping[str, Any]) -> None:
    """Check the analysis keys of ``config``; a ``ValueError`` naming the key and what is allowed."""
    for method, params in (config.get(ANALYSES_KEY) or {}).items():
        if method not in ANALYSES:
            raise ValueError(f"analyses.{method}: unknown analysis; registered: {', '.join(ANALYSES.names())}")
        if params is not None and not isinstance(params, Mapping):
            raise ValueError(f"analyses.{method}: {params!r} is not a mapping of parameters")
        try:
            method_params(config, method)
        except ValueError as exc:
            raise ValueError(f"analyses.{method}.{exc}") from None
    detectors = [name for name in ANALYSES.names() if ANALYSES.get(name).kind == TRAINING_SET]
    for key, allowed in ((ANALYSES_KEY, ANALYSES.names()), (FILTER_KEY, detectors)):
        for experiment, methods in experiment_methods(config, key).items():
            for i, method in enumerate(methods):
                if method not in allowed:
                    what = "a training-set detector" if key == FILTER_KEY and method in ANALYSES else "an analysis"
                    raise ValueError(
                        f"experiments.{experiment}.{key}[{i}]: {method!r} is not {what}; allowed: {', '.join(allowed)}"
                    )
    wanted = set(experiment_methods(config)) | set(experiment_methods(config, FILTER_KEY))
    if wanted:
        from backdoor_eval import experiments as ex

        expanded = ex.expand(config)
        for experiment in sorted(wanted):
            for run in expanded[experiment]:
                if not run.poison_rate > 0 or run.poison_class in ("", "none"):
                    raise ValueError(
                        f"experiments.{experiment}.analyses: run {run.run_id} is clean (poison rate "
                        f"{run.poison_rate}, poison class {run.poison_class!r}); allowed: analyses of poisoned runs"
                    )


def jobs(config: Mapping[str, Any], expanded: Mapping[str, list[Any]]) -> dict[str, list[tuple[str, str]]]:
    """``{"analyze": [(run_id, method)], "filter_retrain": [(run_id, method)]}``, each sorted and de-duplicated.

    A run analysed by two experiments is analysed once; filter-then-retrain needs its method's analysis.
    """
    analyze, retrain = set(), set()
    for key, target in ((ANALYSES_KEY, analyze), (FILTER_KEY, retrain)):
        for experiment, methods in experiment_methods(config, key).items():
            target.update((run.run_id, method) for run in expanded[experiment] for method in methods)
    return {"analyze": sorted(analyze | retrain), FILTER_KEY: sorted(retrain)}


def filtered_run_id(run_id: str, method: str) -> str:
    """The folder, under ``runs/``, of a run filtered by ``method`` and trained again: its phase files and
    checkpoint sit where a run's would (``runs/<run_id>/filtered/<method>/poison/final.json``)."""
    return f"{run_id}/filtered/{method}"


def membership(config: Mapping[str, Any], results_dir: str) -> dict[str, Any]:
    """The document ``aggregate-detections`` / ``aggregate-defenses`` read: per experiment its runs and
    methods, and every result file, built with :class:`backdoor_eval.layout.Layout` (the rules' own paths)."""
    from backdoor_eval import experiments as ex

    layout = Layout(results_dir)
    expanded = ex.expand(config)
    methods, filters = experiment_methods(config), experiment_methods(config, FILTER_KEY)
    document: dict[str, Any] = {"config_name": config.get("name"), "experiments": {}, "results": {}, "filtered": {}}
    for experiment in [name for name in expanded if name in methods or name in filters]:
        runs = [run.run_id for run in expanded[experiment]]
        document["experiments"][experiment] = {
            ANALYSES_KEY: methods.get(experiment, []),
            FILTER_KEY: filters.get(experiment, []),
            "runs": runs,
        }
        for run_id in runs:
            for method in methods.get(experiment, []):
                document["results"].setdefault(run_id, {})[method] = layout.analysis_file(method, "parquet", run_id)
            for method in filters.get(experiment, []):
                filtered = filtered_run_id(run_id, method)
                document["filtered"].setdefault(run_id, {})[method] = {
                    "final": layout.phase_file(POISON_PHASE, "final", filtered),
                    "epochs": layout.phase_file(POISON_PHASE, "epochs", filtered),
                }
    return document


def detection_figures(config: Mapping[str, Any], outputs: Mapping[str, list[str]]) -> dict[str, tuple[str, str]]:
    """Figure -> (experiment, factor) for each detection figure whose paper figure's experiment runs a
    training-set detector (``outputs``: :func:`backdoor_eval.configview.outputs`)."""
    methods = experiment_methods(config)
    figures = {}
    for figure, (paper_figure, factor) in DETECTION_FIGURES.items():
        for experiment in outputs.get(paper_figure, []):
            if any(ANALYSES.get(method).kind == TRAINING_SET for method in methods.get(experiment, [])):
                figures[figure] = (experiment, factor)
    return figures


def models_deleted(layout: Layout, analyze_jobs: list[tuple[str, str]]) -> list[str]:
    """Runs whose poison phase finished and whose ``model.pt`` (temporary unless keep_models: true) was deleted,
    while an analysis that needs the model has not run yet: their poison phase trains again."""
    import os

    again = set()
    for run_id, method in analyze_jobs:
        if not ANALYSES.get(method).needs_model:
            continue
        if (
            os.path.exists(layout.phase_file(POISON_PHASE, "final", run_id))
            and not os.path.exists(layout.phase_file(POISON_PHASE, "model", run_id))
            and not os.path.exists(layout.analysis_file(method, "parquet", run_id))
        ):
            again.add(run_id)
    return sorted(again)


def check_label_sizes(
    config: Mapping[str, Any], class_counts: Mapping[str, Any], expanded: Mapping[str, list[Any]]
) -> None:
    """Every label of every analysed run's poison-train set has the samples its detectors need
    (:meth:`Analysis.min_label_samples`), for the datasets whose class sizes are known before any job."""
    from backdoor_eval.splits import partition_counts

    for experiment, methods in experiment_methods(config).items():
        for method in methods:
            needed = ANALYSES.get(method).min_label_samples(method_params(config, method))
            for dataset in sorted({run.dataset for run in expanded[experiment]} & set(class_counts)):
                sizes = partition_counts(list(class_counts[dataset]))["poison_train"]
                smallest = int(min(sizes))
                if smallest < needed:
                    label = config["datasets"][dataset]["classes"][int(sizes.argmin())]
                    raise ValueError(
                        f"experiments.{experiment}.analyses: {method} needs at least {needed} poison-train images "
                        f"per label, but label {label!r} of {dataset} has {smallest}; allowed: methods that fit "
                        "the class sizes (docs/detection.md)"
                    )
