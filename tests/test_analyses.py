"""The analyses (backdoor_eval.analyses): detectors on planted data, metrics, config checks, the CLI job.

Planted data: a rank-one shift of some samples of one label (spectral
signatures), two well-separated clusters (activation clustering), a model
that predicts one class whenever a trigger pixel is bright (STRIP). Each
finds them (AUROC near 1) and finds nothing on the same data without them
(AUROC near 0.5).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from backdoor_eval.analyses import ANALYSES, TRAINING_SET, plan
from backdoor_eval.analyses.metrics import auroc, detection_metrics
from backdoor_eval.analyses.registry import flag_top_share, read_flagged
from backdoor_eval.analyses.spectral import spectral_scores
from backdoor_eval.analyses.strip import blend, strip_entropy
from backdoor_eval.config import prepare_config

REPO = Path(__file__).resolve().parents[1]
NUM_LABELS, PER_LABEL, DIMS, POISON_CLASS = 4, 120, 24, 1


def planted(shift: float, seed: int = 0, share: float = 0.25, direction: np.ndarray | None = None):
    """Gaussian activations of 4 labels; ``share`` of label 1 (the last ones) moved by ``shift`` along one direction."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_LABELS), PER_LABEL)
    activations = rng.normal(size=(labels.size, DIMS))
    poisoned = np.zeros(labels.size, dtype=bool)
    rows = np.flatnonzero(labels == POISON_CLASS)
    poisoned[rows[-int(share * PER_LABEL) :]] = True
    direction = np.eye(DIMS)[5] if direction is None else direction
    activations[poisoned] += shift * direction
    return activations, labels, poisoned


def metrics_of(method: str, activations, labels, poisoned, **params):
    found = ANALYSES.create(method, **params).detect(activations, labels, 0.25, 0)
    return detection_metrics(found.scores, found.flagged, labels, poisoned, POISON_CLASS), found


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("method", ANALYSES.names())
def test_every_analysis_declares_a_title_a_kind_and_valid_defaults(method):
    cls = ANALYSES.get(method)
    assert cls.name == method and cls.title and cls.kind in (TRAINING_SET, "input")
    assert cls.check_params({}) == cls.defaults


@pytest.mark.parametrize("method", [m for m in ANALYSES.names() if ANALYSES.get(m).kind == TRAINING_SET])
def test_every_training_set_detector_finds_a_far_planted_shift_and_nothing_in_clean_data(method):
    if method == "perfect_filter":
        pytest.skip("an oracle of the overlay's ground truth, tested with the CLI job")
    activations, labels, poisoned = planted(shift=12.0)
    found, _ = metrics_of(method, activations, labels, poisoned)
    assert found["auroc"] > 0.95
    clean = np.zeros_like(poisoned)
    clean[np.flatnonzero(labels == POISON_CLASS)[-30:]] = True  # the same samples, never shifted
    nothing, _ = metrics_of(method, planted(shift=0.0)[0], labels, clean)
    assert 0.3 < nothing["auroc"] < 0.7


# --------------------------------------------------------------------------- spectral signatures


def test_spectral_scores_are_squared_projections_on_the_top_singular_vector_per_label():
    activations, labels, _ = planted(shift=8.0)
    scores = spectral_scores(activations, labels)
    rows = labels == POISON_CLASS
    centred = activations[rows] - activations[rows].mean(0)
    top = np.linalg.eigh(centred.T @ centred)[1][:, -1]  # the same vector, another way
    assert np.allclose(scores[rows], (centred @ top) ** 2)


def test_spectral_signatures_find_a_rank_one_shift_and_remove_one_and_a_half_epsilon_per_label():
    activations, labels, poisoned = planted(shift=8.0, direction=np.ones(DIMS) / np.sqrt(DIMS))
    found, detection = metrics_of("spectral", activations, labels, poisoned, epsilon=0.2)
    assert found["auroc"] > 0.99 and found["tpr"] == 1.0
    assert detection.flagged.reshape(NUM_LABELS, PER_LABEL).sum(axis=1).tolist() == [36] * NUM_LABELS  # 1.5 x 0.2 x 120
    # epsilon null: the run's poison rate (0.25 here): floor(0.375 x 120) = 45 per label
    assert ANALYSES.create("spectral").detect(activations, labels, 0.25, 0).flagged.sum() == 4 * 45


@pytest.mark.parametrize("epsilon", [0.0, 1.0, -0.1, 1.5, "0.1", True])
def test_an_epsilon_outside_the_open_unit_interval_is_named(epsilon):
    with pytest.raises(ValueError, match=r"^epsilon: .* allowed: a number in \(0, 1\) or null"):
        ANALYSES.create("spectral", epsilon=epsilon)


def test_flag_top_share_flags_the_highest_scores_of_each_label():
    scores = np.array([5, 1, 3, 9, 2, 8, 7, 0.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert flag_top_share(scores, labels, 0.5).tolist() == [True, False, False, True, False, True, True, False]
    assert not flag_top_share(scores, labels, 0.1).any()  # floor(0.4) = 0


# --------------------------------------------------------------------------- activation clustering


def test_activation_clustering_flags_the_smaller_of_two_separated_clusters_only():
    activations, labels, poisoned = planted(shift=12.0, direction=np.ones(DIMS) / np.sqrt(DIMS))
    found, detection = metrics_of("activation_clustering", activations, labels, poisoned)
    assert found["auroc"] == 1.0 and found["tpr"] == 1.0 and found["fpr"] == 0.0
    assert found["fpr_all_classes"] == 0.0  # clean labels split into two halves: above the 0.35 threshold
    assert detection.per_label[POISON_CLASS]["smaller_cluster_share"] == pytest.approx(0.25)
    assert detection.per_label[POISON_CLASS]["silhouette"] > 0.5


def test_activation_clustering_with_ica_finds_them_less_sharply():
    # FastICA whitens: the separating direction weighs no more than 9 noise directions (docs/detection.md),
    # so over a dozen seeds of its own draws it misses the clusters now and then, where PCA never does.
    activations, labels, poisoned = planted(shift=12.0, direction=np.ones(DIMS) / np.sqrt(DIMS))

    def aurocs(reduce: str) -> list[float]:
        runs = [
            ANALYSES.create("activation_clustering", reduce=reduce).detect(activations, labels, 0.25, seed)
            for seed in range(12)
        ]
        return [detection_metrics(f.scores, f.flagged, labels, poisoned, POISON_CLASS)["auroc"] for f in runs]

    assert aurocs("pca") == [1.0] * 12
    ica = aurocs("ica")
    assert min(ica) < 1.0 and 0.6 < np.mean(ica) < 1.0 and ica.count(1.0) >= 6


def test_a_label_too_small_to_cluster_fails_naming_it():
    activations, labels, poisoned = planted(shift=12.0)
    keep = (labels != 2) | (np.arange(labels.size) % PER_LABEL < 10)  # label 2 keeps 10 samples
    with pytest.raises(ValueError, match=r"label 2 has 10 poison-train samples; allowed: at least 11"):
        ANALYSES.create("activation_clustering").detect(activations[keep], labels[keep], 0.25, 0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"reduce": "tsne"}, r"^reduce: 'tsne' is unknown; allowed: pca, ica"),
        ({"components": 0}, r"^components: 0 is not allowed"),
        ({"size_threshold": 1.0}, r"^size_threshold: 1.0 is outside"),
        ({"clusters": 3}, r"^clusters: unknown parameter of activation_clustering; allowed: reduce, components"),
    ],
    ids=["unknown-reduction", "no-components", "threshold-1", "unknown-parameter"],
)
def test_bad_clustering_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        ANALYSES.create("activation_clustering", **params)


# --------------------------------------------------------------------------- STRIP


def constant_when_triggered(images: np.ndarray) -> np.ndarray:
    """A planted backdoored model: class 0 for certain when pixel (0, 0) is bright, else spread by the image."""
    triggered = images[:, 0, 0, 0] > 100
    logits = images.reshape(len(images), -1)[:, 1:11].astype(np.float64) / 25.0
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probabilities[triggered] = np.eye(10)[0]
    return probabilities


def strip_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 50, size=(300, 4, 4, 3), dtype=np.uint8)
    return images[:100], images[100:200], images[200:]  # pool, clean test, to trigger


def test_strip_finds_a_trigger_that_makes_the_prediction_constant():
    pool, clean, inputs = strip_inputs()
    triggered = inputs.copy()
    triggered[:, 0, 0] = 255  # survives every blend: (255 + <50) / 2 > 100
    rng = np.random.default_rng(0)
    entropy_triggered = strip_entropy(constant_when_triggered, triggered, pool, 10, rng)
    entropy_clean = strip_entropy(constant_when_triggered, clean, pool, 10, rng)
    assert np.allclose(entropy_triggered, 0.0)
    labels = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    assert auroc(labels, -np.r_[entropy_triggered, entropy_clean]) == 1.0
    untriggered = strip_entropy(constant_when_triggered, inputs, pool, 10, rng)
    assert 0.35 < auroc(labels, -np.r_[untriggered, entropy_clean]) < 0.65


def test_strip_never_blends_a_pool_image_with_itself():
    values = np.array([0, 10, 20, 30, 40], dtype=np.uint8)
    pool = np.broadcast_to(values[:, None, None, None], (5, 1, 1, 3)).copy()
    seen = []

    def record(images):
        seen.append(images[:, 0, 0, 0].copy())
        return np.full((len(images), 2), 0.5)

    entropy = strip_entropy(record, pool, pool, 40, np.random.default_rng(0), pool_positions=np.arange(5))
    assert np.allclose(entropy, 1.0)  # two equally likely classes: one bit
    blended = np.concatenate(seen).reshape(5, 40)
    # with itself an image stays as it is; with any other its value changes (distinct values)
    assert all(values[i] not in blended[i] for i in range(5))
    assert blend(np.array([3], np.uint8), np.array([4], np.uint8)).tolist() == [4]  # half up


# --------------------------------------------------------------------------- metrics


def test_detection_metrics_and_their_random_and_perfect_bounds():
    labels = np.array([1] * 10 + [0] * 10)
    poisoned = np.zeros(20, bool)
    poisoned[7:10] = True  # 3 poisoned, 7 clean in class 1
    flagged = np.zeros(20, bool)
    flagged[[6, 8, 9, 15]] = True  # 2 of 3 poisoned, 1 clean of class 1, 1 of class 0
    scores = np.r_[np.arange(10.0), np.zeros(10)]
    row = detection_metrics(scores, flagged, labels, poisoned, 1)
    assert row["auroc"] == 1.0
    assert (row["tpr"], row["fpr"]) == (pytest.approx(2 / 3), pytest.approx(1 / 7))
    assert row["fpr_all_classes"] == pytest.approx(2 / 17)
    assert row["random_tpr"] == row["random_fpr"] == pytest.approx(3 / 10)  # budget 3 of 10
    assert (row["perfect_tpr"], row["perfect_fpr"]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="a detector needs both"):
        detection_metrics(scores, flagged, labels, np.zeros(20, bool), 1)


def test_an_exclusion_file_must_hold_flagged_positions_of_this_run(tmp_path):
    path = tmp_path / "spectral.npz"
    np.savez(path, flagged=np.array([3, 1, 3]))
    assert read_flagged(path, 10).tolist() == [1, 3]
    with pytest.raises(ValueError, match="flags position 12, outside the 10 poison-train images"):
        np.savez(path, flagged=np.array([12]))
        read_flagged(path, 10)
    np.savez(path, entropy=np.zeros(3))
    with pytest.raises(ValueError, match="holds no 'flagged' array; allowed: the .npz of a training-set detector"):
        read_flagged(path, 10)


# --------------------------------------------------------------------------- config


def quickstart() -> dict:
    return yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["experiments"]["E7"].update(analyses=["spectral", "neural_cleanse"]),
            r"^experiments\.E7\.analyses\[1\]: 'neural_cleanse' is not an analysis; allowed: activation_clustering",
        ),
        (
            lambda c: c["experiments"]["E7"].update(filter_retrain=["strip"]),
            r"^experiments\.E7\.filter_retrain\[0\]: 'strip' is not a training-set detector; allowed: activation_clustering",
        ),
        (
            lambda c: c.update(analyses={"spectral": {"epsilon": 1.2}}),
            r"^analyses\.spectral\.epsilon: 1\.2 is outside the allowed range; allowed: a number in \(0, 1\) or null",
        ),
        (lambda c: c.update(analyses={"spectre": {}}), r"^analyses\.spectre: unknown analysis; registered: "),
        (lambda c: c.update(analyses={"strip": {"num_blends": 0}}), r"^analyses\.strip\.num_blends: 0 is not allowed"),
    ],
    ids=["unknown-analysis", "input-detector-to-filter", "epsilon-above-1", "unknown-method-block", "num-blends-0"],
)
def test_bad_analysis_config_is_named_before_any_job(edit, message):
    config = quickstart()
    edit(config)
    with pytest.raises(ValueError, match=message):
        prepare_config(config, check_registries=False)


def test_a_detector_on_a_clean_run_is_named(monkeypatch):
    config = prepare_config(quickstart(), check_registries=False)
    from backdoor_eval import experiments as ex

    expanded = ex.expand(config)
    clean = [run.__class__(**{**run.params(), "poison_rate": 0.0}) for run in expanded["E7"]]
    monkeypatch.setattr(ex, "expand", lambda config: {**expanded, "E7": clean})
    with pytest.raises(ValueError, match=r"^experiments\.E7\.analyses: run .*/r0\.0/.* is clean"):
        plan.validate(config)


def test_too_small_labels_for_clustering_are_named_before_any_job():
    config = prepare_config(quickstart(), check_registries=False)
    from backdoor_eval import experiments as ex

    plan.check_label_sizes(config, {"synthetic": [300] * 10}, ex.expand(config))
    with pytest.raises(
        ValueError,
        match=r"activation_clustering needs at least 11 poison-train images per label, "
        r"but label 'class3' of synthetic has \d+",
    ):
        plan.check_label_sizes(config, {"synthetic": [300, 300, 300, 10] + [300] * 6}, ex.expand(config))


def test_the_plan_lists_each_run_and_method_once_and_filtering_needs_its_analysis():
    config = prepare_config(quickstart(), check_registries=False)
    from backdoor_eval import experiments as ex

    jobs = plan.jobs(config, ex.expand(config))
    runs = {run.run_id for run in ex.expand(config)["E7"]}
    assert set(jobs["analyze"]) == {
        (r, m) for r in runs for m in ("spectral", "activation_clustering", "strip", "perfect_filter")
    }
    assert set(jobs["filter_retrain"]) == {
        (r, m) for r in runs for m in ("spectral", "activation_clustering", "perfect_filter")
    }
    document = plan.membership(config, "results/quickstart")
    assert document["experiments"]["E7"]["analyses"] == ["spectral", "activation_clustering", "strip"]
    run_id = sorted(runs)[0]
    assert document["results"][run_id]["strip"] == f"results/quickstart/runs/{run_id}/analyses/strip.parquet"
    assert document["filtered"][run_id]["perfect_filter"]["final"] == (
        f"results/quickstart/runs/{run_id}/filtered/perfect_filter/poison/final.json"
    )


def test_detection_figures_follow_the_experiments_of_the_paper_figures():
    config = copy.deepcopy(prepare_config(quickstart(), check_registries=False))
    from backdoor_eval import configview as cv

    assert plan.detection_figures(config, cv.outputs(config)) == {}
    config["experiments"]["E5"]["analyses"] = ["strip"]
    assert plan.detection_figures(config, cv.outputs(config)) == {}  # no training-set detector
    config["experiments"]["E5"]["analyses"] = ["spectral"]
    config["experiments"]["E3"]["analyses"] = ["activation_clustering"]
    assert plan.detection_figures(config, cv.outputs(config)) == {
        "detection_rate": ("E5", "poison_rate"),
        "detection_regularizer": ("E3", "regularizer"),
    }


# --------------------------------------------------------------------------- the CLI job on a trained run


@pytest.mark.slow
def test_analyze_and_filter_then_retrain_on_a_trained_synthetic_run(tmp_path):
    from backdoor_eval.cli import main as cli
    from run_inputs import POISONED_SYNTHETIC_RUN_PARAMS, poisoned_synthetic_run

    synthetic = {"num_classes": 4, "per_class": 120, "size": 16, "seed": 0}
    root, store, parts, poisoned = poisoned_synthetic_run(tmp_path, synthetic)
    model_params = json.dumps({"width": 4})
    train_params = json.dumps({"lr": 3e-3, "batch_size": 32, "max_epochs": 3, "patience": 2})
    common = ["--store", str(store), "--partitions", str(parts), "--poisoned", str(poisoned)]
    train = ["train", *common, "--model", "small_cnn", "--model-params", model_params, "--train-params", train_params]
    train += ["--seed", "0", "--device", "cpu"]

    def outputs(folder):
        return [
            "--out-model",
            str(folder / "model.pt"),
            "--out-epochs",
            str(folder / "epochs.parquet"),
            "--out-final",
            str(folder / "final.json"),
        ]

    assert cli([*train, *outputs(root / "poison")]) == 0
    run_params = json.dumps(POISONED_SYNTHETIC_RUN_PARAMS)
    rows = {}
    for method in ("spectral", "strip", "perfect_filter"):
        analyze = [
            "analyze",
            "--method",
            method,
            *common,
            "--run-params",
            run_params,
            "--model-file",
            str(root / "poison" / "model.pt"),
            "--model",
            "small_cnn",
            "--model-params",
            model_params,
            "--train-params",
            train_params,
            "--device",
            "cpu",
            "--params",
            json.dumps({"num_blends": 4} if method == "strip" else {}),
            "--out-result",
            str(root / f"{method}.parquet"),
            "--out-details",
            str(root / f"{method}.npz"),
        ]
        assert cli(analyze) == 0
        rows[method] = pd.read_parquet(root / f"{method}.parquet").iloc[0]
    manifest = json.loads((poisoned / "manifest.json").read_text())
    assert rows["perfect_filter"]["num_poisoned"] == manifest["sets"]["poison_train"]["num_poisoned"]
    assert (rows["perfect_filter"]["auroc"], rows["perfect_filter"]["tpr"], rows["perfect_filter"]["fpr"]) == (1, 1, 0)
    assert rows["spectral"]["poison_rate"] == 0.3 and rows["spectral"]["seed"] == 0  # typed run factors
    assert 0.0 <= rows["strip"]["auroc"] <= 1.0 and rows["strip"]["num_blends"] == 4
    # filter-then-retrain with the perfect filter: same settings, the poisoned images left out
    assert cli([*train, "--exclude", str(root / "perfect_filter.npz"), *outputs(root / "filtered")]) == 0
    final = json.loads((root / "filtered" / "final.json").read_text())
    before = json.loads((root / "poison" / "final.json").read_text())
    assert final["num_train_images"] == before["num_train_images"] - manifest["sets"]["poison_train"]["num_poisoned"]
    # an exclusion file without flags (STRIP's) is refused before any training
    assert cli([*train, "--exclude", str(root / "strip.npz"), *outputs(root / "bad")]) == 2
    assert not (root / "bad" / "final.json").exists()


def test_runs_whose_model_was_deleted_are_listed_before_their_analyses(tmp_path):
    from backdoor_eval.layout import Layout

    layout = Layout(str(tmp_path))
    run_id = "synthetic/small_cnn/bs/a1.0/many-to-one/tclass0/sall/r0.3/none/seed0"
    final = Path(layout.phase_file("poison", "final", run_id))
    final.parent.mkdir(parents=True)
    final.write_text("{}")
    jobs = [(run_id, "spectral"), (run_id, "perfect_filter")]
    assert plan.models_deleted(layout, jobs) == [run_id]  # finished, model.pt gone, spectral not run yet
    Path(layout.phase_file("poison", "model", run_id)).write_bytes(b"")
    assert plan.models_deleted(layout, jobs) == []
    Path(layout.phase_file("poison", "model", run_id)).unlink()
    result = Path(layout.analysis_file("spectral", "parquet", run_id))
    result.parent.mkdir(parents=True)
    result.write_bytes(b"")
    assert plan.models_deleted(layout, jobs) == []  # analysed already; perfect_filter needs no model


def test_centroid_distance_flags_the_farthest_share_of_each_label():
    activations, labels, poisoned = planted(shift=12.0)
    found, detection = metrics_of("centroid_distance", activations, labels, poisoned, share=0.25)
    assert found["auroc"] > 0.95 and detection.flagged.sum() == 4 * 30


def test_the_quickstart_dag_runs_every_method(tmp_path):
    import re

    from test_workflow import snakemake

    result = snakemake("--configfile", str(REPO / "config" / "quickstart.yaml"), "-n", workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    analysed = set(re.findall(r"rule analyze:\n(?:.*\n)*?\s+wildcards: .*method=(\w+)", text))
    filtered = set(re.findall(r"rule filter_retrain:\n(?:.*\n)*?\s+wildcards: .*method=(\w+)", text))
    assert analysed == {"spectral", "activation_clustering", "strip", "perfect_filter"}
    assert filtered == {"spectral", "activation_clustering", "perfect_filter"}
    targets = ("detections.parquet", "defenses.parquet", "defense_epochs.parquet", "tables/detection.md")
    for target in (*targets, "tables/defense.md"):
        assert f"results/quickstart/{target}" in text


# --------------------------------------------------------------------------- detections.parquet, tables, figures


def detection_rows() -> pd.DataFrame:
    """Rows as aggregate-detections writes them: 2 triggers x 2 rates x 2 seeds, two methods; E5 and E1 share runs."""
    from backdoor_eval.experiments import Run

    rows = []
    for trigger in ("bs", "sin"):
        for rate in (0.1, 0.3):
            for seed in (0, 1):
                run = Run("synthetic", "small_cnn", trigger, 1.0, "many-to-one", "class0", "all", rate, "none", seed)
                for method, auroc_value in (("spectral", rate + seed / 10), ("strip", 0.5)):
                    row = {"experiment": "E5", "run_id": run.run_id, **run.params(), "method": method}
                    row.update(auroc=auroc_value, tpr=0.8, fpr=0.1)
                    rows.append(row)
                    if rate == 0.3:
                        rows.append({**row, "experiment": "E1"})
    return pd.DataFrame(rows)


def test_the_detection_table_averages_over_replicates_only_and_counts_each_run_once():
    from backdoor_eval.analyses.report import detection_table

    table = detection_table(detection_rows())
    assert table.index.names == ["Method", "Dataset", "Model", "Trigger", "Poison rate"]  # the rate varies: a key
    cell = table.loc[("Spectral signatures", "synthetic", "small_cnn", "Square", 0.3)]
    assert cell[("AUROC", "mean")] == pytest.approx(0.35)  # seeds 0 and 1: 0.3 and 0.4
    assert cell[("runs", "mean")] == 2  # the E1 copies of the same runs are not counted again
    assert list(dict.fromkeys(table.index.get_level_values("Method"))) == ["Spectral signatures", "STRIP"]


def test_the_detection_figure_plots_auroc_against_the_factor_per_method():
    from backdoor_eval.analyses.report import detection_figure

    figure = detection_figure(detection_rows(), "E5", "poison_rate")
    means = figure.computed
    assert set(means["method"]) == {"spectral", "strip"}
    spectral = means[(means["method"] == "spectral") & (means["trigger"] == "sin")].sort_values("poison_rate")
    assert spectral["auroc"].tolist() == pytest.approx([0.15, 0.35])
    with pytest.raises(ValueError, match="experiment .E9. has no detection rows to plot"):
        detection_figure(detection_rows(), "E9", "poison_rate")


def test_the_defense_table_puts_filter_then_retrain_beside_clean_retraining():
    from backdoor_eval.analyses.report import defense_table
    from backdoor_eval.experiments import Run

    run = Run("synthetic", "small_cnn", "bs", 1.0, "many-to-one", "class0", "all", 0.3, "none", 0)
    factors = {"run_id": run.run_id, **run.params()}
    runs = pd.DataFrame(
        [
            {
                "experiment": "E1",
                **factors,
                "phase": "poison",
                "adversarial_success_rate": 0.9,
                "clean_val_accuracy": 0.8,
            },
            {
                "experiment": "E2",
                **factors,
                "phase": "clean",
                "adversarial_success_rate": 0.4,
                "clean_val_accuracy": 0.7,
            },
        ]
    )
    defenses = pd.DataFrame(
        [
            {
                "experiment": "E7",
                **factors,
                "method": m,
                "phase": "poison",
                "adversarial_success_rate": a,
                "clean_val_accuracy": 0.8,
            }
            for m, a in (("spectral", 0.5), ("perfect_filter", 0.05))
        ]
    )
    table = defense_table(defenses, runs)
    row = table.iloc[0]
    assert row[("none", "ASR")] == 0.9 and row[("clean retraining", "ASR")] == 0.4
    assert row[("filter: Spectral signatures", "ASR")] == 0.5 and row[("filter: Perfect filter", "ASR")] == 0.05
    assert [label for label, _ in table.columns][::2] == [
        "none",
        "clean retraining",
        "filter: Spectral signatures",
        "filter: Perfect filter",
    ]


def test_defense_rows_keep_every_epoch_of_the_filtered_phases_once_per_run_and_method():
    from backdoor_eval.analyses.report import defense_rows
    from backdoor_eval.evaluate import SUMMARY_METRICS
    from backdoor_eval.experiments import Run

    runs = [Run("synthetic", "small_cnn", "bs", 1.0, "many-to-one", f"class{c}", "all", 0.3, "none", 0) for c in (0, 1)]
    methods = ("spectral", "perfect_filter")
    phases = {}
    for i, run in enumerate(runs):
        for j, method in enumerate(methods):
            asr = [0.0, 0.1 * (i + 1), 0.5 + j / 10]  # epochs 0-2; the kept one is epoch 1
            history = pd.DataFrame({"phase": "poison", "epoch": [0, 1, 2], "adversarial_success_rate": asr})
            for metric in SUMMARY_METRICS:
                if metric != "adversarial_success_rate":
                    history[metric] = 0.5
            final = {"phase": "poison", "epoch": 1, "best_epoch": 1, "epochs_run": 2, "stopped_early": False}
            final.update({metric: float(history.loc[1, metric]) for metric in SUMMARY_METRICS})
            phases[(run.run_id, method)] = (final | {"num_train_images": 100 - j}, history)
    # E1 and D name the first run both: two rows in defenses, its epochs once
    membership = {
        "experiments": {
            "E1": {"runs": [runs[0].run_id], "filter_retrain": list(methods)},
            "D": {"runs": [r.run_id for r in runs], "filter_retrain": list(methods)},
        }
    }
    rows, epochs = defense_rows(membership, phases)
    assert len(rows) == 6 and len(epochs) == 2 * 2 * 3
    assert list(epochs.columns[:2]) == ["run_id", "dataset"] and "experiment" not in epochs.columns
    assert epochs.columns.get_loc("method") == epochs.columns.get_loc("phase") - 1
    one = epochs[(epochs.run_id == runs[1].run_id) & (epochs.method == "perfect_filter")]
    assert one.adversarial_success_rate.tolist() == pytest.approx([0.0, 0.2, 0.6])
    assert one.poison_class.unique().tolist() == ["class1"]
    # the kept epoch is what defenses.parquet holds; the later epoch is only in the epochs
    kept = rows[(rows.run_id == runs[1].run_id) & (rows.method == "perfect_filter")]
    assert kept.adversarial_success_rate.tolist() == pytest.approx([0.2])
    with pytest.raises(ValueError, match="has no 'spectral' filtered phase"):
        defense_rows(membership, {})


def test_combining_detections_names_a_missing_or_foreign_result():
    from backdoor_eval.analyses.report import combine_detections

    rows = detection_rows()
    first = rows.iloc[[0]]
    membership = {"experiments": {"E5": {"runs": [first["run_id"].iloc[0]], "analyses": ["spectral"]}}}
    combined = combine_detections(membership, {(first["run_id"].iloc[0], "spectral"): first.drop(columns="experiment")})
    assert combined.columns[0] == "experiment" and len(combined) == 1
    with pytest.raises(ValueError, match="has no 'spectral' result"):
        combine_detections(membership, {})
    with pytest.raises(ValueError, match="holds another run or method"):
        combine_detections(
            membership, {(first["run_id"].iloc[0], "spectral"): rows.iloc[[1]].drop(columns="experiment")}
        )


def test_membership_does_not_depend_on_the_analyses_keys():
    config = quickstart()
    view = plan.without_analysis_keys(config["experiments"])
    assert (
        "analyses" not in view["E7"] and "filter_retrain" not in view["E7"] and view["E7"]["trigger"] == ["bs", "sin"]
    )
    assert view["E1"] == config["experiments"]["E1"]  # experiments without them: as written
