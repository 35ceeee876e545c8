"""Tests for backdoor_eval.figures and the `figure`/`gallery` commands.

The `runs` frames are synthetic test fixtures with hand-picked values (not
results); each figure's numbers are checked on ``fig.computed``.
"""

from __future__ import annotations

import itertools
import json
import types

import numpy as np
import pandas as pd
import pytest

import run_rows
from backdoor_eval import figures
from backdoor_eval.cli import main


def run_row(experiment, phase="poison", **overrides) -> dict:
    """A runs.parquet row whose accuracies default to 0.8 (the figures' fixtures vary the rest)."""
    return run_rows.run_row(experiment, phase, **{"poison_val_accuracy": 0.8, "clean_val_accuracy": 0.8, **overrides})


@pytest.fixture
def e3_runs() -> pd.DataFrame:
    """E3-like: 2 poison classes x 3 regularizers x 2 seeds; value = base + regularizer offset +- seed jitter."""
    base = {"daisy": 0.80, "rose": 0.60}
    offset = {"none": 0.0, "snnl": -0.30, "mixup": 0.05}
    rows = []
    for poison_class, regularizer, (seed, jitter) in itertools.product(
        base, ["snnl", "mixup", "none"], [(0, -0.02), (1, 0.02)]
    ):
        value = base[poison_class] + offset[regularizer]
        rows.append(
            run_row(
                "E3",
                poison_class=poison_class,
                regularizer=regularizer,
                seed=seed,
                adversarial_success_rate=value + jitter,
                clean_val_accuracy=0.9 - offset[regularizer] / 10,
            )
        )
    rows.append(run_row("E1", poison_class="daisy", adversarial_success_rate=0.0))  # another experiment
    return pd.DataFrame(rows)


def check_saved(fig, stem):
    png, pdf = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"
    assert figures.save_figure(fig, png, pdf, dpi=50) is None  # low dpi keeps the test fast
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    # Each path in the format its suffix names, whatever the order.
    swapped_pdf, swapped_png = stem.parent / f"{stem.name}_b.pdf", stem.parent / f"{stem.name}_b.png"
    figures.save_figure(fig, swapped_pdf, swapped_png, dpi=50)
    assert swapped_pdf.read_bytes()[:5] == b"%PDF-" and swapped_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"'\.jpg'; allowed: \.png, \.pdf"):
        figures.save_figure(fig, stem.parent / f"{stem.name}.jpg", dpi=50)
    assert sorted(p.name for p in png.parent.iterdir() if p.name.startswith(stem.name)) == sorted(
        [pdf.name, png.name, swapped_pdf.name, swapped_png.name]
    )
    assert not [p for p in png.parent.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- Figs. 4, 5


def test_regularization_matrix_means_and_differences(e3_runs):
    means, differences = figures.regularization_matrix(e3_runs, "adversarial_success_rate")
    assert list(means.columns) == ["none", "mixup", "snnl"]  # none first, then tables.REGULARIZER_ORDER
    assert list(means.index) == ["daisy", "rose"]
    np.testing.assert_allclose(means.to_numpy(), [[0.80, 0.85, 0.50], [0.60, 0.65, 0.30]])
    np.testing.assert_allclose(differences.to_numpy(), [[0.0, 0.05, -0.30], [0.0, 0.05, -0.30]], atol=1e-12)
    with pytest.raises(ValueError, match="no regularizer 'none'"):
        figures.regularization_matrix(e3_runs[e3_runs.regularizer != "none"], "clean_val_accuracy")
    with pytest.raises(ValueError, match="metric 'accuracy'"):
        figures.regularization_matrix(e3_runs, "accuracy")
    with pytest.raises(ValueError, match="experiment 'E3' has no runs"):
        figures.regularization_matrix(e3_runs[e3_runs.experiment == "E1"], "clean_val_accuracy")


def test_fig4_colours_are_differences_centred_at_zero_blue_for_decrease(e3_runs, tmp_path):
    fig = figures.fig4_regularization_heatmaps(e3_runs)
    for metric in ("clean_val_accuracy", "adversarial_success_rate"):
        expected = figures.regularization_matrix(e3_runs, metric)
        pd.testing.assert_frame_equal(fig.computed[metric].means, expected.means)
        pd.testing.assert_frame_equal(fig.computed[metric].differences, expected.differences)
    mesh = fig.axes[1].collections[0]  # panel (b)
    np.testing.assert_allclose(mesh.get_array().reshape(2, 3), [[0.0, 0.05, -0.30], [0.0, 0.05, -0.30]], atol=1e-12)
    assert mesh.norm.vmin == pytest.approx(-mesh.norm.vmax)
    red, _, blue, _ = mesh.cmap(mesh.norm(-0.30))
    assert blue > red  # a decrease is blue
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert texts == ["0.80", "0.85", "0.50", "0.60", "0.65", "0.30"]
    check_saved(fig, tmp_path / "fig4")


def test_fig5_boxplots_use_all_runs_in_order(e3_runs, tmp_path):
    fig = figures.fig5_regularization_boxplots(e3_runs)
    assert fig.computed["order"] == ["none", "mixup", "snnl"]
    assert len(fig.computed["data"]) == 12
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["None", "Manifold Mixup", "SNNL"]
    check_saved(fig, tmp_path / "fig5")


# --------------------------------------------------------------------------- Figs. 6, 7


@pytest.fixture
def e4_runs() -> pd.DataFrame:
    rows = []
    for dataset, trigger, phase, model, rate, alpha, seed in itertools.product(
        ["cifar10", "flowers"],
        ["lv", "sin"],
        ["poison", "clean"],
        ["nasnet_mobile", "resnet50"],
        [0.05, 0.1],
        [0.01, 0.1, 1.0],
        [0, 1],
    ):
        value = alpha * (0.5 if phase == "clean" else 1.0) * rate * 10 + 0.01 * seed
        rows.append(
            run_row(
                "E4",
                phase,
                dataset=dataset,
                trigger=trigger,
                model=model,
                poison_rate=rate,
                alpha=alpha,
                seed=seed,
                adversarial_success_rate=min(value, 1.0),
            )
        )
    return pd.DataFrame(rows)


def test_fig6_grid_and_means_over_seeds(e4_runs, tmp_path):
    fig = figures.fig6_alpha(e4_runs)
    means = fig.computed
    assert len(means) == 2 * 2 * 2 * 2 * 2 * 3
    cell = means[
        (means.dataset == "flowers")
        & (means.trigger == "sin")
        & (means.phase == "clean")
        & (means.model == "resnet50")
        & (means.poison_rate == 0.05)
        & (means.alpha == 0.1)
    ]
    assert cell.adversarial_success_rate.item() == pytest.approx(0.1 * 0.5 * 0.5 + 0.005)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == [
        "Flowers, Sine, before retraining",
        "Flowers, Sine, after retraining",
        "Flowers, LV, before retraining",
        "Flowers, LV, after retraining",
    ]
    assert titles[4].startswith("CIFAR-10, Sine")
    assert len(fig.axes[0].lines) == 4  # 2 models x 2 poison rates
    assert fig.axes[0].get_xscale() == "log"
    check_saved(fig, tmp_path / "fig6")


def test_fig7_means_per_trigger_and_poison_rate(tmp_path):
    rows = [
        run_row(
            "E5",
            dataset="cifar10",
            model="nasnet_large",
            poison_class="truck",
            trigger=trigger,
            poison_rate=rate,
            seed=seed,
            poison_val_accuracy=0.9 - rate + seed / 100,
            clean_val_accuracy=0.92,
            adversarial_success_rate=rate * 2,
        )
        for trigger in ("rs", "sin", "bs")
        for rate in (0.01, 0.1, 0.3)
        for seed in (0, 1)
    ]
    fig = figures.fig7_poison_rate(pd.DataFrame(rows))
    means = fig.computed.set_index(["trigger", "poison_rate"])
    assert means.loc[("sin", 0.1), "poison_val_accuracy"] == pytest.approx(0.805)
    assert means.loc[("rs", 0.3), "adversarial_success_rate"] == pytest.approx(0.6)
    assert len(fig.axes[0].lines) == 6 and len(fig.axes[1].lines) == 3
    check_saved(fig, tmp_path / "fig7")


# --------------------------------------------------------------------------- Fig. 2


class StandInSquare:
    """Test stand-in for a Trigger: a black square at a random corner (RS-like), eq. 7 with alpha."""

    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def pattern_and_mask(self, n, height, width, rng):
        top, left = rng.integers(0, height - 2, size=2)
        mask = np.ones((1, height, width, 1), np.float32)
        mask[:, top : top + 2, left : left + 2] = 0.0
        return np.zeros((1, 1, 1, 1), np.float32), mask

    def apply(self, images, rng):
        pattern, mask = self.pattern_and_mask(len(images), *images.shape[1:3], rng)
        return np.clip(((1 - self.alpha) * images + self.alpha * pattern) * (1 - mask) + images * mask, 0, 1)


class StandInSine:
    alpha = 0.1

    def pattern_and_mask(self, n, height, width, rng):
        pattern = 0.4 * np.sin(0.05 * np.pi * np.arange(width, dtype=np.float32) * 224 / width)
        return np.broadcast_to(pattern[None, None, :, None], (1, height, width, 3)), np.zeros((1, 1, 1, 1), np.float32)

    def apply(self, images, rng):
        pattern, _ = self.pattern_and_mask(len(images), *images.shape[1:3], rng)
        return np.clip((1 - self.alpha) * images + self.alpha * pattern, 0, 1)


def test_render_trigger_alone_grey_canvas_and_signed_patterns():
    mask = np.ones((1, 4, 4, 1), np.float32)
    mask[:, 1:3, 1:3] = 0.0
    square = figures.render_trigger_alone(np.zeros((1, 1, 1, 1), np.float32), mask, 4, 4)
    assert square.shape == (4, 4, 3)
    assert (square[1:3, 1:3] == 0.0).all() and square[0].tolist() == [[0.5] * 3] * 4
    signed = np.array([-0.4, 0.0, 0.4, 0.2], np.float32)[None, None, :, None]
    sine = figures.render_trigger_alone(signed, np.zeros((1, 1, 1, 1), np.float32), 2, 4)
    np.testing.assert_allclose(sine[:, :, 0], [[0.1, 0.5, 0.9, 0.7]] * 2, rtol=1e-6)
    image = np.full((1, 3, 3, 3), 0.25, np.float32)  # a non-negative pattern (LV) is shown as is
    np.testing.assert_array_equal(figures.render_trigger_alone(image, np.zeros(1), 3, 3), image[0])


def test_fig2_gallery_rows_use_the_same_random_draw(tmp_path):
    image = np.full((16, 16, 3), 200, np.uint8)
    fig = figures.fig2_trigger_gallery(
        image, [("RS", StandInSquare()), ("Sine", StandInSine())], np.random.default_rng(3)
    )
    triggered, alone = fig.computed["RS"]
    black = np.argwhere((triggered == 0).all(axis=-1))
    assert len(black) == 4
    assert (alone[tuple(black.T)] == 0).all() and (alone == 0).all(axis=-1).sum() == 4
    _, sine_alone = fig.computed["Sine"]
    assert sine_alone.min() == pytest.approx(0.1, abs=1e-3) and sine_alone.max() == pytest.approx(0.9, abs=1e-3)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["Clean", "RS (α = 1)", "Sine (α = 0.1)"]
    check_saved(fig, tmp_path / "fig2")
    with pytest.raises(ValueError, match="uint8"):
        figures.fig2_trigger_gallery(image.astype(np.float32), [("RS", StandInSquare())], np.random.default_rng(0))


def test_fig2_with_the_real_triggers():
    triggers = pytest.importorskip("backdoor_eval.triggers", reason="triggers.py not in this checkout yet")
    image = np.full((32, 32, 3), 128, np.uint8)
    gallery = [(label, triggers.create_trigger(name)) for label, name in (("Square", "bs"), ("Sine", "sin"))]
    fig = figures.fig2_trigger_gallery(image, gallery, np.random.default_rng(0))
    _, square_alone = fig.computed["Square"]
    # BS on 32 px: a 3 px black square at (3, 3) (docs/decisions.md#trigger-geometry), grey elsewhere.
    assert (square_alone[3:6, 3:6] == 0).all() and (square_alone == 0).all(axis=-1).sum() == 9


# --------------------------------------------------------------------------- commands


def figure_args(name, experiments, runs_path, out):
    return [
        "figure",
        "--name",
        name,
        "--experiments",
        experiments,
        "--runs",
        str(runs_path),
        "--out-png",
        str(out / f"{name}.png"),
        "--out-pdf",
        str(out / f"{name}.pdf"),
    ]


def test_figure_command_writes_present_and_rejects_absent(e3_runs, tmp_path, capsys):
    runs_path = tmp_path / "runs.parquet"
    e3_runs.to_parquet(runs_path)
    out = tmp_path / "figures"
    assert main(figure_args("fig4", "E3", runs_path, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["fig4.pdf", "fig4.png"]
    assert (out / "fig4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "fig4.pdf").read_bytes()[:5] == b"%PDF-"
    # A requested experiment absent from runs.parquet is an error naming it and those present.
    capsys.readouterr()
    assert main(figure_args("fig6", "E4", runs_path, out)) == 2
    err = capsys.readouterr().err
    assert "experiment 'E4' has no rows" in err and "experiments there: E1, E3" in err
    assert sorted(p.name for p in out.iterdir()) == ["fig4.pdf", "fig4.png"]
    # A figure is built from one experiment; a missing runs file is an error too.
    assert main(figure_args("fig4", "E3+E1", runs_path, out)) == 2
    assert (
        "backdoor-eval figure: error: --experiments 'E3+E1' for fig4; allowed: one experiment name (e.g. 'E3')"
    ) in capsys.readouterr().err
    assert main(figure_args("fig4", "E3", tmp_path / "none.parquet", out)) == 2
    assert f"runs file {tmp_path / 'none.parquet'} not found" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["fig4.pdf", "fig4.png"]


def test_gallery_command_picks_the_clean_val_image(monkeypatch, tmp_path, capsys):
    images = np.zeros((5, 16, 16, 3), np.uint8)
    images[3] = 77  # clean_val[1] -> store index 3
    store = types.SimpleNamespace(images=images)
    made = []

    def create_trigger(name, alpha=None, **params):
        made.append((name, alpha, params))
        return StandInSine() if name in ("sin", "lv") else StandInSquare(1.0 if alpha is None else alpha)

    seen = {}
    real_gallery = figures.fig2_trigger_gallery

    def spy_gallery(image, triggers, rng):
        seen["image"] = image
        fig = real_gallery(image, triggers, rng)
        seen["computed"] = fig.computed
        return fig

    monkeypatch.setattr("backdoor_eval.data.open_store", lambda path: store)
    monkeypatch.setattr("backdoor_eval.splits.load_partitions", lambda path: {"clean_val": np.array([0, 3, 4])})
    monkeypatch.setattr("backdoor_eval.triggers.create_trigger", create_trigger)
    monkeypatch.setattr(figures, "fig2_trigger_gallery", spy_gallery)
    for name in ("store", "parts.npz", "lv.npz"):
        (tmp_path / name).touch()
    args = [
        "gallery",
        "--store",
        str(tmp_path / "store"),
        "--partitions",
        str(tmp_path / "parts.npz"),
        "--lv-fit",
        str(tmp_path / "lv.npz"),
        "--image-index",
        "1",
        "--out-png",
        str(tmp_path / "fig2.png"),
        "--out-pdf",
        str(tmp_path / "fig2.pdf"),
    ]
    assert main(args) == 0
    assert (seen["image"] == 77).all()
    lv_fit = str(tmp_path / "lv.npz")
    assert made == [("bs", None, {}), ("rs", None, {}), ("sin", None, {}), ("lv", None, {"fit": lv_fit})]
    assert (tmp_path / "fig2.png").stat().st_size > 0 and (tmp_path / "fig2.pdf").stat().st_size > 0

    # The config's settings, as the workflow passes them: alphas, LV reading, order.
    made.clear()
    specs = {"lv": {"alpha": 0.3, "params": {"reading": "scaled"}}, "bs": {"alpha": 0.5, "params": {}}}
    assert main([*args, "--triggers", json.dumps(specs)]) == 0
    assert made == [("lv", 0.3, {"reading": "scaled", "fit": lv_fit}), ("bs", 0.5, {})]
    assert list(seen["computed"]) == ["LV", "Square"]
    capsys.readouterr()
    assert main([*args, "--triggers", json.dumps({"bs": {"size": 3}})]) == 2
    assert (
        'backdoor-eval gallery: error: --triggers bs: {\'size\': 3}; allowed: {"kind": K, "alpha": A, "params": {...}}'
    ) in capsys.readouterr().err
    outs = args[-4:]
    assert main(args[:-6] + ["--image-index", "3", *outs]) == 2
    assert (
        "backdoor-eval gallery: error: --image-index 3 is out of range; allowed: 0..2 (a position in the clean_val"
    ) in capsys.readouterr().err
    assert main(args[:-4] + ["--out-png", str(tmp_path / "fig2.jpg"), "--out-pdf", str(tmp_path / "fig2.pdf")]) == 2
    assert (
        f"backdoor-eval gallery: error: figure file {tmp_path / 'fig2.jpg'} ends in '.jpg'; allowed: .png, .pdf"
    ) in capsys.readouterr().err
    assert not (tmp_path / "fig2.jpg").exists()
    # A fitted trigger shown without its fit file: named before any image is read; the others need none.
    without_fit = args[:5] + args[7:]
    assert main(without_fit) == 2
    assert "error: trigger 'lv' needs its fit: give --lv-fit FILE (from `fit-lv`)" in capsys.readouterr().err
    made.clear()
    assert main([*without_fit, "--triggers", json.dumps({"sin": {}})]) == 0 and made == [("sin", None, {})]


def test_log_axes_tick_the_grid_values_in_plain_numbers(tmp_path):
    rows = [
        run_row("E5", dataset="cifar10", trigger="bs", poison_rate=rate, adversarial_success_rate=rate)
        for rate in (0.01, 0.02, 0.2, 0.5)
    ]
    fig = figures.fig7_poison_rate(pd.DataFrame(rows), experiment="E5")
    axis = fig.axes[-1].xaxis
    assert [tick.get_text() for tick in axis.get_majorticklabels()] == ["0.01", "0.02", "0.2", "0.5"]
    assert all(tick.get_text() == "" for tick in axis.get_minorticklabels())


def test_the_retraining_curves_plot_the_mean_and_range_per_model_and_epoch(tmp_path):
    from test_tables import retraining_rows  # the same hand-picked rows

    runs, epochs = retraining_rows()
    fig = figures.retraining_curves(runs, epochs, "F")
    stats = fig.computed.set_index(["model", "epoch"])
    assert stats.loc[("small_cnn_pre", 5), "mean"] == pytest.approx(0.35)
    assert stats.loc[("small_cnn_pre", 5), "min"] == pytest.approx(0.3)
    assert stats.loc[("small_cnn_pre", 5), "max"] == pytest.approx(0.4)
    assert stats["count"].eq(2).all() and sorted(stats.index.get_level_values("epoch").unique()) == list(range(7))
    assert [ax.get_title() for ax in fig.axes] == ["Square"]


# --------------------------------------------------------------------------- the optimizer (beyond the paper)


def test_fig_optimizer_draws_the_tables_numbers(tmp_path):
    rows = [
        run_row("E8", phase, optimizer=optimizer, poison_class=poison_class, adversarial_success_rate=value)
        for optimizer, value in (("sgd", 0.2), ("adamw", 0.6))
        for poison_class in ("rose", "tulip")
        for phase in ("poison", "clean")
    ]
    fig = figures.fig_optimizer(pd.DataFrame(rows), experiment="E8")
    computed = fig.computed
    assert list(dict.fromkeys(computed["optimizer"])) == ["sgd", "adamw"]
    asr = computed[(computed["metric"] == "adversarial_success_rate") & (computed["phase"] == "clean")]
    assert asr.set_index("optimizer")["mean"].to_dict() == {"sgd": pytest.approx(0.2), "adamw": pytest.approx(0.6)}
    # Two rows of panels (metrics) x two columns (phases), one bar per optimizer in each.
    axes = fig.get_axes()
    assert len(axes) == 4 and all(len(ax.patches) == 2 for ax in axes)
    check_saved(fig, tmp_path / "fig_optimizer")
