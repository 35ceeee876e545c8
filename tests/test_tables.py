"""Tests for backdoor_eval.tables and the `aggregate`/`table1`/`table` commands.

Every `runs` frame here is a synthetic test fixture with hand-picked metric
values (not results), so each table cell can be checked exactly.
"""

from __future__ import annotations

import itertools
import json
import statistics
import types

import numpy as np
import pandas as pd
import pytest

from backdoor_eval import tables
from backdoor_eval.cli import main
from run_rows import run_row

FLOWERS_CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
FLOWERS_COUNTS = [710, 980, 734, 675, 904]  # the paper's Table 1 counts
# The paper's Table 1: floor(0.1 * N_t) and the P_c columns (1 decimal).
PAPER_FLOOR = [71, 98, 73, 67, 90]
PAPER_P = [
    [0.0, 21.1, 15.8, 14.6, 19.5],
    [23.0, 0.0, 23.8, 21.9, 29.3],
    [15.9, 21.9, 0.0, 15.1, 20.2],
    [14.3, 19.7, 14.8, 0.0, 18.2],
    [20.6, 28.5, 21.3, 19.6, 0.0],
]


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows)


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of every table row of Markdown ``text`` (header and separator excluded)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


# --------------------------------------------------------------------------- Table 2


@pytest.fixture
def grid_runs() -> pd.DataFrame:
    """E1 (phase poison) and E2 (phase clean) over 2 datasets, 4 models (one unknown), 3 triggers."""
    rows = []
    value = 0.0
    for experiment, phase in (("E1", "poison"), ("E2", "clean")):
        for dataset in ("cifar10", "flowers"):
            for model in ("vit_tiny", "nasnet_mobile", "resnet50", "nasnet_large"):
                for trigger in ("lv", "zigzag", "bs"):
                    for poison_class in ("rose", "tulip"):
                        for seed in (0, 1):
                            value = (value + 0.037) % 1.0
                            rows.append(
                                run_row(
                                    experiment,
                                    phase,
                                    dataset=dataset,
                                    model=model,
                                    trigger=trigger,
                                    poison_class=poison_class,
                                    seed=seed,
                                    adversarial_success_rate=value,
                                    poison_val_accuracy=1 - value,
                                    clean_val_accuracy=value / 2,
                                )
                            )
    return frame(rows)


def test_table2_cell_is_mean_over_poison_classes_and_seeds():
    values_no = [0.1, 0.2, 0.3, 0.4]
    values_yes = [0.0, 0.05, 0.1, 0.25]
    rows = []
    for i, (poison_class, seed) in enumerate([("rose", 0), ("rose", 1), ("tulip", 0), ("tulip", 1)]):
        rows.append(
            run_row("E1", "poison", poison_class=poison_class, seed=seed, adversarial_success_rate=values_no[i])
        )
        rows.append(
            run_row("E2", "clean", poison_class=poison_class, seed=seed, adversarial_success_rate=values_yes[i])
        )
    # Decoys that must not enter the cells: the E1 run's clean phase, another experiment.
    rows.append(run_row("E1", "clean", adversarial_success_rate=1.0))
    rows.append(run_row("E2", "poison", adversarial_success_rate=1.0))
    rows.append(run_row("E4", "poison", adversarial_success_rate=1.0))
    table = tables.table2(frame(rows))
    assert table.loc[("Flowers", "Adversarial Test", "No"), ("ResNet50", "Square")] == pytest.approx(0.25)
    assert table.loc[("Flowers", "Adversarial Test", "Yes"), ("ResNet50", "Square")] == pytest.approx(0.1)
    counts = tables.table2(frame(rows), statistic="count")
    assert counts.loc[("Flowers", "Adversarial Test", "No"), ("ResNet50", "Square")] == 4
    assert counts.dtypes.unique().tolist() == [np.dtype("int64")]
    spread = tables.table2(frame(rows), statistic="std")
    assert spread.iloc[0, 0] == pytest.approx(statistics.stdev(values_no))


@pytest.mark.parametrize("factor", ["regularizer", "alpha", "poison_rate", "optimizer"])
def test_tables_refuse_to_average_over_a_factor_they_do_not_name(factor):
    other = {"regularizer": "snnl", "alpha": 0.5, "poison_rate": 0.2, "optimizer": "sgd"}[factor]
    rows = [run_row("E1", "poison"), run_row("E1", "poison", **{factor: other})]
    with pytest.raises(ValueError, match=rf"^table2 \(\['E1'\]\): its runs differ in {factor} \(.*\) within one cell"):
        tables.table2(frame(rows), no=["E1"], yes=None)
    # A factor that varies between cells, not within one, is fine: the trigger is a column.
    rows = [run_row("E1", "poison"), run_row("E1", "poison", trigger="sin", **{factor: other})]
    assert tables.table2(frame(rows), no=["E1"], yes=None).shape == (1, 2)


def test_rows_without_a_factor_column_read_as_one_value():
    # Results made before a factor existed lack its column: nothing to average over.
    runs = frame([run_row("E1", "poison"), run_row("E1", "poison", poison_class="tulip")]).drop(columns="regularizer")
    assert tables.table2(runs, no="E1", yes=None).iloc[0, 0] == pytest.approx(0.5)


def test_table2_takes_each_experiments_phases_and_counts_a_shared_run_once():
    rows = [
        run_row("E1", "poison", adversarial_success_rate=0.8),
        run_row("E2", "clean", adversarial_success_rate=0.2),
        # E7 has both phases: its poison phase joins the "No" rows, its clean phase the "Yes" rows.
        run_row("E7", "poison", poison_class="tulip", adversarial_success_rate=0.6),
        run_row("E7", "clean", poison_class="tulip", adversarial_success_rate=0.4),
        # The E1 run again under E7: one run, counted once.
        run_row("E7", "poison", adversarial_success_rate=0.8),
    ]
    runs = frame(rows)
    no, yes = tables.retraining_halves(runs, ["E1", "E2", "E7"])
    assert (no, yes) == (["E1", "E7"], ["E2", "E7"])
    assert tables.retraining_halves(runs, ["E1", "E2"]) == (["E1"], ["E2"])  # the paper's reading of "E1+E2"
    table = tables.table2(runs, no=no, yes=yes)
    assert table.loc[("Flowers", "Adversarial Test", "No"), ("ResNet50", "Square")] == pytest.approx(0.7)
    assert table.loc[("Flowers", "Adversarial Test", "Yes"), ("ResNet50", "Square")] == pytest.approx(0.3)
    counts = tables.table2(runs, no=no, yes=yes, statistic="count")
    assert counts.loc[("Flowers", "Adversarial Test", "No"), ("ResNet50", "Square")] == 2


def test_table2_layout_follows_the_paper_then_unknown_names(grid_runs):
    table = tables.table2(grid_runs)
    assert table.index.names == ["Dataset", "Split", "Retrained?"]
    assert table.columns.names == ["Model", "Trigger"]
    assert list(table.index) == [
        ("Flowers", "Adversarial Test", "No"),
        ("Flowers", "Adversarial Test", "Yes"),
        ("CIFAR-10", "Adversarial Test", "No"),
        ("CIFAR-10", "Adversarial Test", "Yes"),
    ]
    models = ["ResNet50", "NasNet", "NasNet Mobile", "vit_tiny"]
    triggers = ["Square", "LV", "zigzag"]
    assert list(table.columns) == [(m, t) for m in models for t in triggers]
    expected = grid_runs[
        (grid_runs.experiment == "E2")
        & (grid_runs.dataset == "cifar10")
        & (grid_runs.model == "vit_tiny")
        & (grid_runs.trigger == "zigzag")
    ]["adversarial_success_rate"].mean()
    assert table.loc[("CIFAR-10", "Adversarial Test", "Yes"), ("vit_tiny", "zigzag")] == pytest.approx(expected)


def test_table2_half_left_out_and_missing_experiment(grid_runs):
    only_no = tables.table2(grid_runs, yes=None)
    assert [row[2] for row in only_no.index] == ["No", "No"]
    only_yes = tables.table2(grid_runs[grid_runs.experiment == "E2"], no=None)
    assert [row[2] for row in only_yes.index] == ["Yes", "Yes"]
    with pytest.raises(ValueError, match="experiment 'E2' has no runs.*E1"):
        tables.table2(grid_runs[grid_runs.experiment == "E1"])
    with pytest.raises(ValueError, match="statistic 'median'.*mean, std, count"):
        tables.table2(grid_runs, statistic="median")
    with pytest.raises(ValueError, match="no experiment given"):
        tables.table2(grid_runs, no=None, yes=None)


def test_table2_missing_cell_is_nan_and_dash_in_markdown():
    rows = [
        run_row("E1", "poison", trigger="bs", adversarial_success_rate=0.75),
        run_row("E1", "poison", trigger="sin", dataset="cifar10", adversarial_success_rate=0.9),
    ]
    table = tables.table2(frame(rows), yes=None)
    assert np.isnan(table.loc[("Flowers", "Adversarial Test", "No"), ("ResNet50", "Sine")])
    assert markdown_rows(tables.to_markdown(table)) == [
        ["Flowers", "Adversarial Test", "No", "0.75", "-"],
        ["CIFAR-10", "Adversarial Test", "No", "-", "0.90"],
    ]


# --------------------------------------------------------------------------- Table 3


def test_table3_splits_are_poisoned_and_clean_accuracy(grid_runs):
    table = tables.table3(grid_runs)
    assert list(table.index)[:4] == [
        ("Flowers", "Poisoned", "No"),
        ("Flowers", "Clean", "No"),
        ("Flowers", "Poisoned", "Yes"),
        ("Flowers", "Clean", "Yes"),
    ]
    cell = grid_runs[
        (grid_runs.experiment == "E2")
        & (grid_runs.dataset == "flowers")
        & (grid_runs.model == "nasnet_large")
        & (grid_runs.trigger == "lv")
    ]
    assert table.loc[("Flowers", "Poisoned", "Yes"), ("NasNet", "LV")] == pytest.approx(cell.poison_val_accuracy.mean())
    assert table.loc[("Flowers", "Clean", "Yes"), ("NasNet", "LV")] == pytest.approx(cell.clean_val_accuracy.mean())


# --------------------------------------------------------------------------- Tables 4, 5


@pytest.fixture
def strategy_runs() -> pd.DataFrame:
    """E6: Flowers rose, one-to-one from 4 sources x 2 seeds, many-to-one x 2 seeds, for two models."""
    rows = []
    per_source = {"daisy": 0.80, "dandelion": 0.82, "sunflower": 0.84, "tulip": 0.86}
    for model, offset in (("resnet50", 0.0), ("nasnet_mobile", -0.1)):
        for source, accuracy in per_source.items():
            for seed, jitter in ((0, -0.01), (1, 0.01)):  # seeds average back to `accuracy`
                rows.append(
                    run_row(
                        "E6",
                        "poison",
                        model=model,
                        strategy="one-to-one",
                        source=source,
                        seed=seed,
                        poison_val_accuracy=accuracy + offset + jitter,
                        clean_val_accuracy=accuracy + offset + 0.05 + jitter,
                        adversarial_success_rate=accuracy - 0.5 + jitter,
                        adversarial_success_rate_source=accuracy - 0.2 + jitter,
                    )
                )
        for seed, value in ((0, 0.88), (1, 0.90)):
            rows.append(
                run_row(
                    "E6",
                    "poison",
                    model=model,
                    seed=seed,
                    poison_val_accuracy=value + offset,
                    clean_val_accuracy=value,
                    adversarial_success_rate=0.7 + seed / 10,
                )
            )
    rows.append(run_row("E6", "clean", strategy="one-to-one", source="daisy", poison_val_accuracy=0.0))
    return frame(rows)


def test_table4_mean_and_sample_std_over_sources(strategy_runs):
    table = tables.table4(strategy_runs)
    assert list(table.index) == [("ResNet50", "Flowers"), ("NasNet Mobile", "Flowers")]
    assert list(table.columns) == [
        ("Poisoned 1-to-1", "mean"),
        ("Poisoned 1-to-1", "std"),
        ("Poisoned M-to-1", "mean"),
        ("Clean 1-to-1", "mean"),
        ("Clean 1-to-1", "std"),
        ("Clean M-to-1", "mean"),
    ]
    sources = [0.80, 0.82, 0.84, 0.86]
    row = table.loc[("ResNet50", "Flowers")]
    assert row[("Poisoned 1-to-1", "mean")] == pytest.approx(statistics.mean(sources))
    assert row[("Poisoned 1-to-1", "std")] == pytest.approx(statistics.stdev(sources))  # ddof=1
    assert row[("Poisoned M-to-1", "mean")] == pytest.approx(0.89)
    assert row[("Clean 1-to-1", "mean")] == pytest.approx(statistics.mean(sources) + 0.05)
    assert table.loc[("NasNet Mobile", "Flowers"), ("Poisoned M-to-1", "mean")] == pytest.approx(0.79)
    # 0.83 ± stdev(0.80, 0.82, 0.84, 0.86) = 0.0258 -> "0.83 ± 0.03"
    assert markdown_rows(tables.to_markdown(table)) == [
        ["ResNet50", "Flowers", "0.83 ± 0.03", "0.89", "0.88 ± 0.03", "0.89"],
        ["NasNet Mobile", "Flowers", "0.73 ± 0.03", "0.79", "0.78 ± 0.03", "0.89"],
    ]


def test_table5_source_column_and_csv_keeps_numbers(strategy_runs, tmp_path):
    table = tables.table5(strategy_runs)
    row = table.loc[("ResNet50", "Flowers")]
    assert row[("1-to-1", "mean")] == pytest.approx(0.33)
    assert row[("1-to-1 source class", "mean")] == pytest.approx(0.63)
    assert row[("1-to-1 source class", "std")] == pytest.approx(statistics.stdev([0.60, 0.62, 0.64, 0.66]))
    assert row[("M-to-1", "mean")] == pytest.approx(0.75)
    csv_path, md_path = tmp_path / "table5.csv", tmp_path / "table5.md"
    assert tables.write_table(table, csv_path, md_path, note="a note") is None
    written = pd.read_csv(csv_path)
    assert list(written.columns) == [
        "Model",
        "Dataset",
        "1-to-1 / mean",
        "1-to-1 / std",
        "1-to-1 source class / mean",
        "1-to-1 source class / std",
        "M-to-1 / mean",
    ]
    assert written.loc[0, "1-to-1 source class / std"] == pytest.approx(row[("1-to-1 source class", "std")])
    text = md_path.read_text()
    assert "0.63 ± 0.03" in text and text.rstrip().endswith("a note")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table5.csv", "table5.md"]  # no temp files left


def test_strategy_tables_reject_unknown_strategy_and_empty_experiment(strategy_runs):
    bad = strategy_runs.copy()
    bad.loc[0, "strategy"] = "all-to-all"
    with pytest.raises(ValueError, match="'all-to-all'.*many-to-one, one-to-one"):
        tables.table4(bad)
    with pytest.raises(ValueError, match="experiment 'E9' has no runs"):
        tables.table5(strategy_runs, experiment="E9")


# --------------------------------------------------------------------------- Table 1


def test_table1_flowers_counts_match_the_paper():
    pytest.importorskip("backdoor_eval.poison", reason="poison.py (poison_stats) not in this checkout yet")
    table = tables.table1(FLOWERS_COUNTS, FLOWERS_CLASSES, 0.1)
    assert table["poison_class"].tolist() == FLOWERS_CLASSES
    assert table["num_poisoned"].tolist() == PAPER_FLOOR
    p_columns = [f"P_{name}" for name in FLOWERS_CLASSES]
    assert np.round(table[p_columns].to_numpy(dtype=float), 1).tolist() == PAPER_P
    # p = floor / all images in the set (4003), docs/decisions.md#effective-poisoning-rate;
    # 98/4003 = 0.0245, not the paper's 0.025.
    assert table["effective_poisoning_rate"].to_numpy() == pytest.approx(np.array(PAPER_FLOOR) / 4003)
    text = tables.to_markdown(table, decimals=tables.table1_decimals(table))
    assert "0.0245" in text and "21.1" in text


def test_table1_markdown_has_4_decimal_p_and_the_misprint_note(tmp_path):
    table = tables.table1(FLOWERS_COUNTS, FLOWERS_CLASSES, 0.1)
    md_path = tmp_path / "table1.md"
    assert (
        tables.write_table(
            table,
            tmp_path / "table1.csv",
            md_path,
            decimals=tables.table1_decimals(table),
            note=tables.TABLE_NOTES["table1"],
        )
        is None
    )
    text = md_path.read_text()
    assert markdown_rows(text)[0] == ["daisy", "71", "0.0", "21.1", "15.8", "14.6", "19.5", "0.0177"]
    assert "0.0177" in text and "0.0245" in text and "0.0225" in text
    assert "misprinted" in text and "docs/decisions.md#effective-poisoning-rate" in text
    with pytest.raises(ValueError, match="5 entries but class_names has 4"):
        tables.table1(FLOWERS_COUNTS, FLOWERS_CLASSES[:4], 0.1)


# --------------------------------------------------------------------------- helpers


def test_a_new_trigger_is_named_and_ordered_by_its_class(fitted_toy):
    assert tables.display_name("trigger", fitted_toy.NAME) == "Mean image"
    assert tables.trigger_order() == ["bs", "rs", "sin", "lv", fitted_toy.NAME]
    assert tables.ordered(["zz", fitted_toy.NAME, "sin"], tables.trigger_order()) == ["sin", fitted_toy.NAME, "zz"]


def test_display_names_and_order():
    assert tables.display_name("trigger", "sin") == "Sine"
    assert tables.display_name("model", "new_net") == "new_net"
    assert tables.ordered(["zz", "lv", "bs", "aa", "lv"], tables.trigger_order()) == ["bs", "lv", "aa", "zz"]
    with pytest.raises(ValueError, match="kind 'colour'"):
        tables.display_name("colour", "x")


# --------------------------------------------------------------------------- aggregate


def epochs_frame(row: dict, phase: str, count: int) -> pd.DataFrame:
    keep = {k: v for k, v in row.items() if k not in ("experiment", "phase", "epoch")}
    return pd.DataFrame([{**keep, "phase": phase, "epoch": e, "is_best": e == 1, "seconds": 1.0} for e in range(count)])


def write_run(tmp_path, row_poison, row_clean=None):
    """Per-run summary.parquet / epochs.parquet as `backdoor-eval summarize` writes them."""
    rows = [row_poison] + ([row_clean] if row_clean else [])
    summary = pd.DataFrame([{k: v for k, v in r.items() if k != "experiment"} for r in rows])
    epochs = pd.concat(
        [epochs_frame(row_poison, "poison", 3)] + ([epochs_frame(row_clean, "clean", 2)] if row_clean else []),
        ignore_index=True,
    )
    folder = tmp_path / "runs" / row_poison["run_id"]
    folder.mkdir(parents=True)
    summary.to_parquet(folder / "summary.parquet")
    epochs.to_parquet(folder / "epochs.parquet")
    return {"summary": str(folder / "summary.parquet"), "epochs": str(folder / "epochs.parquet")}


@pytest.fixture
def membership_file(tmp_path):
    run_a = run_row(adversarial_success_rate=0.9)
    run_a_clean = {**run_a, "phase": "clean", "adversarial_success_rate": 0.1}
    run_b = run_row(trigger="sin", alpha=0.1, adversarial_success_rate=0.6)
    membership = {
        "config_name": "test",
        "experiments": {
            "E1": {"description": "trigger x model", "phases": ["poison"], "runs": [run_a["run_id"], run_b["run_id"]]},
            "E2": {"description": "retrained", "phases": ["clean"], "runs": [run_a["run_id"]]},
        },
        "runs": {run_a["run_id"]: write_run(tmp_path, run_a, run_a_clean), run_b["run_id"]: write_run(tmp_path, run_b)},
    }
    path = tmp_path / "membership.json"
    path.write_text(json.dumps(membership))
    return path, run_a["run_id"], run_b["run_id"]


def test_aggregate_writes_runs_and_epochs(membership_file, tmp_path):
    path, run_a, run_b = membership_file
    out_runs, out_epochs = tmp_path / "out" / "runs.parquet", tmp_path / "out" / "epochs.parquet"
    args = ["--membership", str(path), "--out-runs", str(out_runs), "--out-epochs", str(out_epochs)]
    assert main(["aggregate", *args]) == 0
    runs = pd.read_parquet(out_runs)
    assert runs.columns[0] == "experiment"
    assert list(zip(runs.experiment, runs.run_id, runs.phase)) == [
        ("E1", run_a, "poison"),
        ("E1", run_b, "poison"),
        ("E2", run_a, "clean"),
    ]
    assert runs.adversarial_success_rate.tolist() == [0.9, 0.6, 0.1]
    epochs = pd.read_parquet(out_epochs)
    assert "experiment" not in epochs.columns
    assert list(zip(epochs.run_id, epochs.phase, epochs.epoch)) == (
        [(run_a, "poison", e) for e in range(3)]
        + [(run_a, "clean", e) for e in range(2)]
        + [(run_b, "poison", e) for e in range(3)]
    )
    # The aggregated file feeds the tables directly.
    table = tables.table2(runs)
    assert table.loc[("Flowers", "Adversarial Test", "Yes"), ("ResNet50", "Square")] == pytest.approx(0.1)


def test_aggregate_missing_file_names_the_run(membership_file, tmp_path, capsys):
    path, run_a, _ = membership_file
    membership = json.loads(path.read_text())
    (tmp_path / "runs" / run_a / "epochs.parquet").unlink()
    code = main(
        [
            "aggregate",
            "--membership",
            str(path),
            "--out-runs",
            str(tmp_path / "r.parquet"),
            "--out-epochs",
            str(tmp_path / "e.parquet"),
        ]
    )
    assert code == 2
    assert f"run {run_a!r}: epochs file" in capsys.readouterr().err
    assert not (tmp_path / "r.parquet").exists()
    membership["experiments"]["E2"]["phases"] = ["poison", "clean"]
    summaries = {run_id: pd.read_parquet(paths["summary"]) for run_id, paths in membership["runs"].items()}
    with pytest.raises(ValueError, match="has no 'poison'-phase|has no per-epoch"):
        tables.combine_runs(membership, summaries, {})
    membership["experiments"]["E1"]["runs"].append("not/a/run")
    with pytest.raises(ValueError, match="run 'not/a/run' .*has no summary"):
        tables.combine_runs(membership, summaries, {})


def test_aggregate_reads_rows_made_before_an_added_factor_as_its_default():
    old = pd.DataFrame([run_row("E1", "poison")]).drop(columns=["experiment", "optimizer"])
    new = pd.DataFrame([run_row("E1", "poison", poison_class="tulip", optimizer="sgd")]).drop(columns="experiment")
    membership = {"experiments": {"E1": {"phases": ["poison"], "runs": [old.run_id[0], new.run_id[0]]}}}
    epochs = {old.run_id[0]: old, new.run_id[0]: new}
    runs, _ = tables.combine_runs(membership, {old.run_id[0]: old, new.run_id[0]: new}, epochs)
    assert runs["optimizer"].tolist() == ["default", "sgd"]
    # Results of a config that never had the factor stay as they were: no column added.
    runs, _ = tables.combine_runs(
        {"experiments": {"E1": {"phases": ["poison"], "runs": [old.run_id[0]]}}}, {old.run_id[0]: old}, epochs
    )
    assert "optimizer" not in runs.columns


# --------------------------------------------------------------------------- table1 / table commands


def table_args(name, experiments, runs_path, out, counts=False):
    args = [
        "table",
        "--name",
        name,
        "--experiments",
        experiments,
        "--runs",
        str(runs_path),
        "--out-csv",
        str(out / f"{name}.csv"),
        "--out-md",
        str(out / f"{name}.md"),
    ]
    if counts:
        args += ["--out-counts-csv", str(out / f"{name}_n.csv"), "--out-counts-md", str(out / f"{name}_n.md")]
    return args


def test_table_command_writes_present_tables_and_rejects_absent(grid_runs, strategy_runs, tmp_path, capsys):
    runs_path = tmp_path / "runs.parquet"
    pd.concat([grid_runs[grid_runs.experiment == "E1"], strategy_runs]).to_parquet(runs_path)
    out = tmp_path / "tables"
    assert main(table_args("table2", "E1", runs_path, out, counts=True)) == 0
    assert main(table_args("table3", "E1", runs_path, out, counts=True)) == 0
    assert main(table_args("table4", "E6", runs_path, out)) == 0
    assert main(table_args("table5", "E6", runs_path, out)) == 0
    written = sorted(
        f"{name}.{ext}"
        for name in ("table2", "table2_n", "table3", "table3_n", "table4", "table5")
        for ext in ("csv", "md")
    )
    assert sorted(p.name for p in out.iterdir()) == written
    # Built from E1 alone: only the 'No' rows.
    table2 = pd.read_csv(out / "table2.csv")
    assert table2["Retrained?"].tolist() == ["No", "No"]
    counts = pd.read_csv(out / "table2_n.csv")
    assert counts["ResNet50 / Square"].tolist() == [4, 4]
    assert "Built from experiment(s) E1 of runs.parquet." in (out / "table2.md").read_text()
    # A requested experiment absent from runs.parquet is an error naming it and those present; nothing written.
    capsys.readouterr()
    assert main(table_args("table2", "E1+E2", runs_path, tmp_path / "absent", counts=True)) == 2
    err = capsys.readouterr().err
    assert "experiment 'E2' has no rows" in err and "experiments there: E1, E6" in err
    assert main(table_args("table5", "E7", runs_path, tmp_path / "absent")) == 2
    assert "experiment 'E7' has no rows" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()
    # Counts only for tables 2-3, and both files or neither; tables 4-5 take one experiment.
    bad = tmp_path / "bad"
    one_counts_file = table_args("table2", "E1", runs_path, bad) + ["--out-counts-csv", str(bad / "table2_n.csv")]
    for args, message in (
        (table_args("table4", "E6", runs_path, bad, counts=True), "only with table2 or table3"),
        (one_counts_file, "--out-counts-csv and --out-counts-md go together"),
        (
            table_args("table4", "E6+E1", runs_path, bad),
            "--experiments 'E6+E1' for table4; allowed: one experiment name (e.g. 'E3')",
        ),
        (
            table_args("table2", "+", runs_path, bad, counts=True),
            "--experiments '+' for table2; allowed: one or more experiment names joined by '+' (e.g. 'E1+E2')",
        ),
        (table_args("table2", "E1", tmp_path / "none.parquet", bad), "none.parquet not found"),
    ):
        assert main(args) == 2
        assert message in capsys.readouterr().err
    assert not bad.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(table_args("table9", "E1", runs_path, bad))
    assert exit_info.value.code == 2
    assert (
        "backdoor-eval table: error: argument --name: invalid choice: 'table9' "
        "(choose from 'table2', 'table3', 'table4', 'table5', 'table_optimizer')"
    ) in capsys.readouterr().err


def table1_args(out, *extra):
    return [
        "table1",
        "--store",
        "store",
        *extra,
        "--out-csv",
        str(out / "table1.csv"),
        "--out-md",
        str(out / "table1.md"),
    ]


def test_table1_command_from_store(monkeypatch, tmp_path):
    labels = np.repeat(np.arange(5), FLOWERS_COUNTS)
    store = types.SimpleNamespace(labels=labels, class_names=FLOWERS_CLASSES)
    monkeypatch.setattr("backdoor_eval.data.open_store", lambda path: store)
    out = tmp_path / "tables"
    assert main(table1_args(out, "--poison-rate", "0.1")) == 0
    table1 = pd.read_csv(out / "table1.csv")
    assert table1["num_poisoned"].tolist() == PAPER_FLOOR


def test_table1_command_with_given_counts_overrides_the_store(monkeypatch, tmp_path, capsys):
    # A store with the full Flowers release counts; the config gives the paper's training-set counts.
    labels = np.repeat(np.arange(5), [764, 1052, 784, 733, 984])
    store = types.SimpleNamespace(labels=labels, class_names=FLOWERS_CLASSES)
    monkeypatch.setattr("backdoor_eval.data.open_store", lambda path: store)
    out = tmp_path / "tables"
    assert main(table1_args(out, "--class-counts", ",".join(map(str, FLOWERS_COUNTS)))) == 0
    table1 = pd.read_csv(out / "table1.csv")
    assert table1["num_poisoned"].tolist() == PAPER_FLOOR
    assert "as given (710,980,734,675,904)" in (out / "table1.md").read_text()
    capsys.readouterr()
    assert main(table1_args(tmp_path / "bad", "--class-counts", "710,980")) == 2
    assert "gives 2 counts but the store has 5 classes" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- retraining budget


def retraining_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Experiment F: two models x one trigger x two seeds, each retrained 6 clean epochs with hand-picked
    ASRs (clean epoch e of seed s: start - step * e), plus an unretrained run of another experiment."""
    runs, epochs = [], []
    for model, start, step in (("small_cnn", 0.8, 0.01), ("small_cnn_pre", 0.9, 0.1)):
        for seed in (0, 1):
            for phase in ("poison", "clean"):
                runs.append(run_row("F", phase, model=model, seed=seed, dataset="cifar10", poison_class="truck"))
            run_id = runs[-1]["run_id"]
            for epoch in range(7):
                asr = max(0.0, start - step * epoch - 0.1 * seed)
                epochs.append(
                    {
                        "run_id": run_id,
                        "phase": "clean",
                        "epoch": epoch,
                        "adversarial_success_rate": asr,
                        "clean_val_accuracy": 0.6 + 0.01 * epoch,
                        "dataset": "cifar10",
                        "model": model,
                        "trigger": "bs",
                    }
                )
            epochs.append({**epochs[-1], "phase": "poison", "epoch": 9, "adversarial_success_rate": 1.0})
    runs.append(run_row("E1", "poison", model="other", dataset="cifar10"))
    return pd.DataFrame(runs), pd.DataFrame(epochs)


@pytest.fixture
def budget_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return retraining_rows()


def test_the_retraining_budget_reads_epochs_0_5_and_the_last_of_the_experiments_runs(budget_frames):
    runs, epochs = budget_frames
    frame = tables.retraining_budget(runs, epochs, "F")
    assert frame["model"].tolist() == ["small_cnn", "small_cnn_pre"] and frame["runs"].tolist() == [2, 2]
    scratch, pre = frame.iloc[0], frame.iloc[1]
    # mean over seeds 0 and 1 (the seed-1 run sits 0.1 lower); sample std of two values 0.1 apart
    assert scratch["ASR e0 mean"] == pytest.approx(0.75) and scratch["ASR e0 std"] == pytest.approx(0.1 / 2**0.5)
    assert scratch["ASR e5 mean"] == pytest.approx(0.70) and scratch["ASR e6 mean"] == pytest.approx(0.69)
    assert pre["ASR e5 mean"] == pytest.approx((0.4 + 0.3) / 2) and pre["ASR e6 min"] == pytest.approx(0.2)
    assert pre["ASR e6 max"] == pytest.approx(0.3) and pre["clean acc e6 mean"] == pytest.approx(0.66)
    assert "ASR e9 mean" not in frame.columns  # poison-phase epochs are not retraining epochs


def test_the_retraining_budget_names_what_is_missing(budget_frames):
    runs, epochs = budget_frames
    with pytest.raises(ValueError, match="experiment 'E1' has no 'clean'-phase rows"):
        tables.retraining_budget(runs, epochs, "E1")
    with pytest.raises(ValueError, match="epochs.parquet has no clean-phase rows of its 4 runs"):
        tables.retraining_budget(runs, epochs[epochs["phase"] == "poison"], "F")


def test_the_retraining_budget_command_writes_the_table_and_the_figure(budget_frames, tmp_path):
    runs, epochs = budget_frames
    runs.to_parquet(tmp_path / "runs.parquet"), epochs.to_parquet(tmp_path / "epochs.parquet")
    out = {ext: tmp_path / f"out.{ext}" for ext in ("csv", "md", "png", "pdf")}
    args = ["retraining-budget", "--experiments", "F", "--runs", str(tmp_path / "runs.parquet")]
    args += ["--epochs", str(tmp_path / "epochs.parquet")]
    for ext, path in out.items():
        args += [f"--out-{ext}", str(path)]
    assert main(args) == 0
    written = pd.read_csv(out["csv"])
    assert written["ASR e5 mean"].round(6).tolist() == [0.7, 0.35]
    assert "e5: the paper's budget" in out["md"].read_text()
    assert out["png"].stat().st_size > 0 and out["pdf"].read_bytes().startswith(b"%PDF")


# --------------------------------------------------------------------------- the optimizer table (beyond the paper)


@pytest.fixture
def optimizer_runs() -> pd.DataFrame:
    """E8-like: 3 optimizers x 2 triggers x 2 poison classes, both phases; ASR = base + class offset."""
    base = {"sgd": 0.2, "adam": 0.5, "adamw": 0.6}
    rows = []
    for optimizer, trigger, (poison_class, offset), phase in itertools.product(
        base, ["sin", "bs"], [("rose", 0.0), ("tulip", 0.1)], ["poison", "clean"]
    ):
        asr = base[optimizer] + offset - (0.3 if phase == "clean" else 0.0)
        rows.append(
            run_row(
                "E8",
                phase,
                optimizer=optimizer,
                trigger=trigger,
                poison_class=poison_class,
                adversarial_success_rate=asr,
            )
        )
    rows.append(run_row("E1", "poison", adversarial_success_rate=1.0))  # another experiment
    return pd.DataFrame(rows)


def test_the_optimizer_table_groups_by_the_optimizer(optimizer_runs, tmp_path):
    table = tables.table_optimizer(optimizer_runs, experiment="E8")
    assert table.index.names == ["Dataset", "Model", "Trigger", "Optimizer"]
    # Paper order of triggers, then the optimizers in their order.
    assert [row[2:] for row in table.index] == [
        (trigger, optimizer) for trigger in ("Square", "Sine") for optimizer in ("SGD", "Adam", "AdamW")
    ]
    before = ("Adversarial success, before retraining", "mean")
    after = ("Adversarial success, after retraining", "mean")
    assert table.loc[("Flowers", "ResNet50", "Square", "SGD"), before] == pytest.approx(0.25)
    assert table.loc[("Flowers", "ResNet50", "Sine", "AdamW"), after] == pytest.approx(0.35)
    spread = table.loc[("Flowers", "ResNet50", "Square", "Adam"), ("Adversarial success, before retraining", "std")]
    assert spread == pytest.approx(statistics.stdev([0.5, 0.6]))
    assert (table[("Clean accuracy, before retraining", "mean")] == 0.5).all()
    # The same numbers, long, are what the figure draws; each mean is over 2 runs.
    long = tables.optimizer_means(optimizer_runs, "E8")
    assert set(long["count"]) == {2}
    assert len(long) == 2 * 3 * 2 * 2  # trigger x optimizer x phase x metric
    tables.write_table(table, tmp_path / "t.csv", tmp_path / "t.md", note=tables.TABLE_NOTES["table_optimizer"])
    assert "| Flowers   | ResNet50 | Square    | SGD" in (tmp_path / "t.md").read_text()


def test_the_optimizer_table_refuses_a_factor_it_does_not_name(optimizer_runs):
    runs = optimizer_runs.copy()
    runs.loc[runs.index[0], "regularizer"] = "snnl"
    with pytest.raises(ValueError, match=r"table_optimizer \(E8\): its runs differ in regularizer"):
        tables.table_optimizer(runs, experiment="E8")
