"""Tests for backdoor_eval.poison and the attack CLI: selection, eq. 8, Table 1, overlays."""

from __future__ import annotations

import importlib
import json
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from backdoor_eval import seeding
from backdoor_eval.cli import main
from backdoor_eval.lv_fit import fit_low_variance, save_lv_fit
from backdoor_eval.names import PARTITIONS
from backdoor_eval.poison import (
    load_poisoned,
    materialize,
    num_poisoned,
    poison_stats,
    select_poison,
)
from backdoor_eval.triggers import create_trigger, to_float, to_uint8

FLOWERS_COUNTS = [710, 980, 734, 675, 904]
FLOWERS_NAMES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
# Table 1 of the paper (lambda = 0.1, many-to-one), as printed.
TABLE1_NUM_POISONED = [71, 98, 73, 67, 90]
TABLE1_P = [
    [0, 21.1, 15.8, 14.6, 19.5],
    [23.0, 0, 23.8, 21.9, 29.3],
    [15.9, 21.9, 0, 15.1, 20.2],
    [14.3, 19.7, 14.8, 0, 18.2],
    [20.6, 28.5, 21.3, 19.6, 0],
]


@dataclass
class TinyStore:
    """In-memory stand-in for data.Store (duck typing: what poison.py reads)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    manifest: dict = field(default_factory=dict)

    def class_index(self, name_or_int):
        if isinstance(name_or_int, str):
            if name_or_int not in self.class_names:
                raise ValueError(f"class {name_or_int!r} is unknown; allowed: {self.class_names}")
            return self.class_names.index(name_or_int)
        return int(name_or_int)


def tiny_store(counts=(50, 60, 40, 30, 70), size=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int64)
    images = rng.integers(0, 256, (labels.size, size, size, 3), dtype=np.uint8)
    names = [f"class{i}" for i in range(len(counts))]
    return TinyStore(images, labels, names, {"dataset": "tiny", "sha256": {"images": "x", "labels": "y"}})


def tiny_partitions(labels, seed=0):
    """A random 5-way split (the real one is splits.py's job; any disjoint cover will do here)."""
    part = np.random.default_rng(seed).choice(5, size=labels.size, p=[0.6, 0.16, 0.12, 0.07, 0.05])
    return {name: np.flatnonzero(part == i).astype(np.int64) for i, name in enumerate(PARTITIONS)}


@pytest.fixture
def store():
    return tiny_store()


@pytest.fixture
def partitions(store):
    return tiny_partitions(store.labels)


# --- select_poison ---------------------------------------------------------


@pytest.mark.parametrize("poison_rate", [0.05, 0.1, 0.29, 0.5])
def test_select_replaces_floor_rate_times_poison_class_with_other_classes(poison_rate):
    labels = np.repeat(np.arange(5), [100, 80, 60, 40, 20])
    replaced, drawn = select_poison(labels, 0, poison_rate, "many-to-one", None, np.random.default_rng(0))
    expected = int(np.floor(round(poison_rate * 100, 6)))  # 0.29 * 100 = 28.999... must still give 29
    assert replaced.size == drawn.size == expected
    assert (labels[replaced] == 0).all() and (labels[drawn] != 0).all()
    assert len(set(replaced)) == replaced.size and len(set(drawn)) == drawn.size
    after = np.concatenate([np.delete(labels, replaced), np.zeros(drawn.size, int)])
    np.testing.assert_array_equal(np.bincount(after), np.bincount(labels))


def test_num_poisoned_is_the_floor():
    assert [num_poisoned(0.1, n) for n in FLOWERS_COUNTS] == TABLE1_NUM_POISONED
    assert num_poisoned(0.29, 100) == 29 and num_poisoned(0.07, 100) == 7 and num_poisoned(0.01, 99) == 0


def test_one_to_one_draws_only_from_the_source():
    labels = np.repeat(np.arange(4), 50)
    for seed in range(20):
        replaced, drawn = select_poison(labels, 3, 0.2, "one-to-one", 1, np.random.default_rng(seed))
        assert (labels[drawn] == 1).all() and (labels[replaced] == 3).all() and drawn.size == 10


def test_source_counts_average_to_eq8():
    """Over 2,000 seeds the per-source-class draw count averages to eq. 8.

    One draw is multivariate hypergeometric (71 of 3,293 pooled images), so
    each class count has variance n q (1 - q) (M - n) / (M - 1), q = N_c / M;
    the mean over 2,000 seeds is within 4 standard errors of eq. 8 with
    probability > 0.9999 per class (normal approximation).
    """
    labels = np.repeat(np.arange(5), FLOWERS_COUNTS)
    seeds = 2000
    totals = np.zeros(5)
    for seed in range(seeds):
        _, drawn = select_poison(labels, 0, 0.1, "many-to-one", None, np.random.default_rng(seed))
        totals += np.bincount(labels[drawn], minlength=5)
    mean = totals / seeds
    counts = np.array(FLOWERS_COUNTS, float)
    pooled, n = counts[1:].sum(), 71
    q = counts / pooled
    expected = n * q * (np.arange(5) != 0)
    std_error = np.sqrt(n * q * (1 - q) * (pooled - n) / (pooled - 1) / seeds)
    assert mean[0] == 0
    assert (np.abs(mean - expected)[1:] < 4 * std_error[1:]).all(), (mean, expected)
    np.testing.assert_allclose(expected[1:], TABLE1_P[0][1:], atol=0.05)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"poison_rate": 0.0}, r"poison_rate=0.0 is outside the allowed range \(0, 1\)"),
        ({"poison_rate": 1.0}, r"outside the allowed range \(0, 1\)"),
        ({"poison_rate": -0.1}, r"outside the allowed range"),
        ({"strategy": "all-to-all"}, r"strategy='all-to-all' is unknown; allowed: many-to-one, one-to-one"),
        ({"strategy": "one-to-one", "source": 2}, r"source=2 equals poison_class=2"),
        ({"strategy": "one-to-one", "source": None}, r"needs a source class"),
        ({"strategy": "many-to-one", "source": 1}, r"given for many-to-one"),
        ({"strategy": "one-to-one", "source": 3, "poison_rate": 0.9}, r"hold only 5"),
        ({"poison_class": 7}, r"poison_class=7"),
    ],
    ids=[
        "rate-0",
        "rate-1",
        "rate-negative",
        "strategy-unknown",
        "source-is-poison-class",
        "one-to-one-without-source",
        "many-to-one-with-source",
        "source-too-small",
        "poison_class-out-of-range",
    ],
)
def test_select_errors_name_the_bad_value(kwargs, message):
    labels = np.repeat(np.arange(4), [10, 10, 10, 5])
    args = {"poison_class": 2, "poison_rate": 0.1, "strategy": "many-to-one", "source": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        select_poison(labels, rng=np.random.default_rng(0), **args)


# --- Table 1 ---------------------------------------------------------------


def test_poison_stats_reproduces_table1():
    frame = poison_stats(FLOWERS_COUNTS, 0.1, class_names=FLOWERS_NAMES)
    assert list(frame.columns) == ["poison_class", "num_poisoned"] + [f"P_{n}" for n in FLOWERS_NAMES] + [
        "effective_poisoning_rate"
    ]
    assert frame["poison_class"].tolist() == FLOWERS_NAMES
    assert frame["num_poisoned"].tolist() == TABLE1_NUM_POISONED
    p_columns = frame[[f"P_{n}" for n in FLOWERS_NAMES]].to_numpy()
    np.testing.assert_array_equal(np.round(p_columns, 1), TABLE1_P)
    np.testing.assert_allclose(frame["effective_poisoning_rate"], np.array(TABLE1_NUM_POISONED) / 4003)
    np.testing.assert_allclose(p_columns.sum(axis=1), TABLE1_NUM_POISONED)  # eq. 8 splits the floor exactly


def test_poison_stats_one_to_one_puts_everything_on_the_source():
    frame = poison_stats(FLOWERS_COUNTS, 0.1, strategy="one-to-one", source=2)
    assert frame["poison_class"].tolist() == ["1", "2", "4", "5"]  # no row with source == poison class
    np.testing.assert_array_equal(frame["P_3"], frame["num_poisoned"])
    assert (frame[["P_1", "P_2", "P_4", "P_5"]].to_numpy() == 0).all()


TABLE1_CSV = """poison_class,num_poisoned,P_1,P_2,P_3,P_4,P_5,effective_poisoning_rate
1,71,0.0,21.1,15.8,14.6,19.5,0.0177
2,98,23.0,0.0,23.8,21.9,29.3,0.0245
3,73,15.9,21.9,0.0,15.1,20.2,0.0182
4,67,14.3,19.7,14.8,0.0,18.2,0.0167
5,90,20.6,28.5,21.3,19.6,0.0,0.0225
"""


def test_poison_stats_cli_prints_table1(capsys, tmp_path):
    out = tmp_path / "table1.csv"
    assert main(["poison-stats", "--class-counts", "710,980,734,675,904", "--rate", "0.1", "--out", str(out)]) == 0
    assert capsys.readouterr().out == TABLE1_CSV
    assert out.read_text() == TABLE1_CSV
    frame = pd.read_csv(out)
    assert frame["effective_poisoning_rate"].tolist() == [0.0177, 0.0245, 0.0182, 0.0167, 0.0225]  # 71/4003 ...


def test_poison_stats_cli_with_names_and_one_to_one(capsys):
    names = ",".join(FLOWERS_NAMES)
    argv = ["poison-stats", "--class-counts", "710,980,734,675,904", "--rate", "0.1", "--class-names", names]
    assert main(argv + ["--strategy", "one-to-one", "--source", "rose"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("poison_class,num_poisoned,P_daisy,")
    assert lines[1] == "daisy,71,0.0,0.0,71.0,0.0,0.0,0.0177" and len(lines) == 5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rate", "1.5"], "poison_rate=1.5 is outside"),
        (["--rate", "0.1", "--strategy", "one-to-one"], "one-to-one poisoning needs a source class"),
        (["--rate", "0.1", "--strategy", "one-to-one", "--source", "5"], "source=5; allowed: a class index in 0..4"),
        (["--rate", "0.1", "--strategy", "one-to-one", "--source", "lily"], "--source 'lily'; allowed"),
        (["--class-counts", "710,x", "--rate", "0.1"], "--class-counts '710,x'"),
        (["--rate", "0.1", "--class-names", "a,b"], "2 class names for 5"),
        (
            ["--class-counts", "0,0", "--rate", "0.1"],
            "class_counts=[0, 0]; allowed: two or more counts >= 0, not all 0",
        ),
        (["--class-counts", "", "--rate", "0.1"], "--class-counts ''; allowed: comma-separated whole numbers"),
    ],
    ids=[
        "rate-1.5",
        "one-to-one-without-source",
        "source-index-out-of-range",
        "source-unknown-name",
        "class-counts-not-numbers",
        "class-names-count",
        "all-counts-zero",
        "class-counts-empty",
    ],
)
def test_poison_stats_cli_errors_exit_2(capsys, extra, message):
    argv = ["poison-stats", "--class-counts", "710,980,734,675,904", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("backdoor-eval poison-stats: error:") and message in err


# --- materialize / load_poisoned ---------------------------------------------


def run_materialize(store, partitions, out_dir, trigger=None, seed=0, **kwargs):
    args = {"poison_class": 1, "poison_rate": 0.2, "strategy": "many-to-one", "source": None, **kwargs}
    return materialize(store, partitions, trigger or create_trigger("bs"), seed=seed, out_dir=out_dir, **args)


def test_materialize_refuses_a_run_that_poisons_no_training_image(store, partitions, tmp_path):
    count = int((np.asarray(store.labels)[partitions["poison_train"]] == 1).sum())
    with pytest.raises(ValueError, match=rf"poison_rate=0.01 x {count} poison-train images of class 'class1' rounds"):
        run_materialize(store, partitions, tmp_path / "zero", poison_rate=0.01)
    assert not (tmp_path / "zero").exists()


def test_materialize_writes_only_indices_and_triggered_pixels(store, partitions, tmp_path):
    manifest = run_materialize(store, partitions, tmp_path / "run", trigger=create_trigger("sin"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["manifest.json", "overlay.npz"]
    with np.load(tmp_path / "run" / "overlay.npz") as npz:
        overlay = {key: npz[key] for key in npz.files}
    assert sorted(overlay) == sorted(
        f"{s}_{k}" for s in ("poison_train", "poison_val") for k in ("replaced", "drawn", "pixels")
    )
    for set_name in ("poison_train", "poison_val"):
        indices = partitions[set_name]
        replaced, drawn, pixels = (overlay[f"{set_name}_{k}"] for k in ("replaced", "drawn", "pixels"))
        n_t = int((store.labels[indices] == 1).sum())
        assert replaced.size == drawn.size == pixels.shape[0] == int(np.floor(0.2 * n_t))
        assert np.isin(replaced, indices).all() and np.isin(drawn, indices).all()
        assert (store.labels[replaced] == 1).all() and (store.labels[drawn] != 1).all()
        assert pixels.dtype == np.uint8 and pixels.shape[1:] == store.images.shape[1:]
        expected = to_uint8(create_trigger("sin").apply(to_float(store.images[drawn])))
        np.testing.assert_array_equal(pixels, expected)
        info = manifest["sets"][set_name]
        assert info["class_counts_before"] == info["class_counts_after"]
        assert info["num_poisoned"] == drawn.size and info["drawn_per_class"][1] == 0
        assert info["effective_poisoning_rate"] == drawn.size / indices.size
    assert manifest["trigger"] == create_trigger("sin").spec()
    assert manifest["adv_seed"] == seeding.derived_seed(0, "adv_test/trigger")


def test_adversarial_test_excludes_the_poison_class(store, partitions, tmp_path):
    manifest = run_materialize(store, partitions, tmp_path / "m21")
    adv = np.array(manifest["adv_test"]["indices"])
    expected = partitions["adv_test"][store.labels[partitions["adv_test"]] != 1]
    np.testing.assert_array_equal(adv, expected)
    assert manifest["adv_test"]["source_indices"] == []
    data = load_poisoned(store, partitions, tmp_path / "m21")
    assert not data.adv_test_source_mask.any() and (data.adv_test_labels != 1).all()
    np.testing.assert_array_equal(data.adv_test_images, store.images[expected])


def test_one_to_one_marks_the_source_in_the_adversarial_test(store, partitions, tmp_path):
    manifest = run_materialize(store, partitions, tmp_path / "o2o", strategy="one-to-one", source="class4")
    assert manifest["source"] == 4 and manifest["source_name"] == "class4"
    data = load_poisoned(store, partitions, tmp_path / "o2o")
    np.testing.assert_array_equal(data.adv_test_source_mask, data.adv_test_labels == 4)
    assert data.adv_test_source_mask.any() and (data.adv_test_labels != 1).all()
    for set_name in ("poison_train", "poison_val"):
        assert manifest["sets"][set_name]["drawn_per_class"] == [0, 0, 0, 0, manifest["sets"][set_name]["num_poisoned"]]


def test_same_seed_gives_identical_files_and_other_seeds_differ(store, partitions, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run_materialize(store, partitions, tmp_path / name, trigger=create_trigger("rs"), seed=seed)
    for file in ("overlay.npz", "manifest.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
        assert (tmp_path / "a" / file).read_bytes() != (tmp_path / "c" / file).read_bytes()


def test_selection_does_not_depend_on_the_trigger(store, partitions, tmp_path):
    run_materialize(store, partitions, tmp_path / "bs", trigger=create_trigger("bs"))
    run_materialize(store, partitions, tmp_path / "sin", trigger=create_trigger("sin"))
    with np.load(tmp_path / "bs" / "overlay.npz") as bs, np.load(tmp_path / "sin" / "overlay.npz") as sin:
        np.testing.assert_array_equal(bs["poison_train_drawn"], sin["poison_train_drawn"])
        np.testing.assert_array_equal(bs["poison_val_replaced"], sin["poison_val_replaced"])


def test_load_poisoned_rebuilds_the_sets(store, partitions, tmp_path):
    manifest = run_materialize(store, partitions, tmp_path / "run", trigger=create_trigger("bs", alpha=0.6))
    data = load_poisoned(store, partitions, tmp_path / "run")
    assert sorted(data.sets) == ["clean_train", "clean_val", "poison_train", "poison_val"]
    with np.load(tmp_path / "run" / "overlay.npz") as npz:
        for set_name in ("poison_train", "poison_val"):
            images, labels = data.sets[set_name]
            indices = partitions[set_name]
            kept = indices[~np.isin(indices, npz[f"{set_name}_replaced"])]
            k = npz[f"{set_name}_pixels"].shape[0]
            assert images.dtype == np.uint8 and labels.dtype == np.int64 and images.shape[0] == indices.size
            np.testing.assert_array_equal(images[: kept.size], store.images[kept])
            np.testing.assert_array_equal(images[kept.size :], npz[f"{set_name}_pixels"])
            assert (labels[kept.size :] == 1).all() and labels[kept.size :].size == k
            np.testing.assert_array_equal(
                np.bincount(labels, minlength=5), np.bincount(store.labels[indices], minlength=5)
            )
    for set_name in ("clean_train", "clean_val"):
        images, labels = data.sets[set_name]
        np.testing.assert_array_equal(images, store.images[partitions[set_name]])
        np.testing.assert_array_equal(labels, store.labels[partitions[set_name]])
    assert data.trigger.spec() == manifest["trigger"] and data.poison_class == 1
    assert data.adv_seed == manifest["adv_seed"] and isinstance(data.adv_seed, int)


def test_load_poisoned_refuses_other_partitions_or_store(store, partitions, tmp_path):
    run_materialize(store, partitions, tmp_path / "run")
    with pytest.raises(ValueError, match="other partitions"):
        load_poisoned(store, tiny_partitions(store.labels, seed=1), tmp_path / "run")
    other = TinyStore(store.images, store.labels, store.class_names, {"sha256": {"images": "z"}})
    with pytest.raises(ValueError, match="another store"):
        load_poisoned(other, partitions, tmp_path / "run")


def test_lv_trigger_through_materialize_and_load(store, partitions, tmp_path):
    train = store.images[partitions["poison_train"]]
    fit = fit_low_variance(train, store.images[partitions["clean_val"][0]])
    save_lv_fit(tmp_path / "lv.npz", fit)
    trigger = create_trigger("lv", fit=str(tmp_path / "lv.npz"))
    manifest = run_materialize(store, partitions, tmp_path / "run", trigger=trigger)
    assert manifest["trigger"]["fit"] == str(tmp_path / "lv.npz") and manifest["trigger"]["alpha"] == 0.5
    data = load_poisoned(store, partitions, tmp_path / "run")
    np.testing.assert_array_equal(data.trigger.pattern, fit.pattern)


def test_materialize_errors(store, partitions, tmp_path):
    with pytest.raises(ValueError, match="source=1 equals poison_class=1"):
        run_materialize(store, partitions, tmp_path / "x", strategy="one-to-one", source=1)
    with pytest.raises(ValueError, match="unknown"):
        run_materialize(store, partitions, tmp_path / "x", poison_class="class9")
    with pytest.raises(ValueError, match="seed=-1"):
        run_materialize(store, partitions, tmp_path / "x", seed=-1)
    assert not (tmp_path / "x").exists()


# --- the poison CLI with stand-ins for data.py / splits.py --------------------


@pytest.fixture
def fake_data_modules(monkeypatch, store, partitions):
    """The CLI imports open_store / load_partitions lazily; point them at the tiny store.

    Patches the real data/splits modules when they import, else stands in for them.
    """
    stand_ins = {
        "backdoor_eval.data": ("open_store", lambda path, **kwargs: store),
        "backdoor_eval.splits": ("load_partitions", lambda path, num_images=None: partitions),
    }
    for module_name, (attribute, function) in stand_ins.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = types.ModuleType(module_name)
            monkeypatch.setitem(sys.modules, module_name, module)
        monkeypatch.setattr(module, attribute, function, raising=False)


def test_poison_cli_matches_materialize(fake_data_modules, store, partitions, tmp_path):
    argv = ["poison", "--store", "s", "--partitions", "p.npz", "--trigger", "bs", "--alpha", "0.5",
            "--trigger-params", '{"size_px": 2}', "--poison-class", "class2", "--poison-rate", "0.1",
            "--strategy", "one-to-one", "--source", "0", "--seed", "5", "--out", str(tmp_path / "cli")]  # fmt: skip
    assert main(argv) == 0
    run_materialize(store, partitions, tmp_path / "api", trigger=create_trigger("bs", alpha=0.5, size_px=2),
                    seed=5, poison_class=2, poison_rate=0.1, strategy="one-to-one", source=0)  # fmt: skip
    for file in ("overlay.npz", "manifest.json"):
        assert (tmp_path / "cli" / file).read_bytes() == (tmp_path / "api" / file).read_bytes()


def test_fit_lv_cli_fits_on_poison_train_with_a_clean_val_reference(fake_data_modules, store, partitions, tmp_path):
    assert (
        main(["fit-lv", "--store", "s", "--partitions", "p.npz", "--seed", "2", "--out", str(tmp_path / "lv.npz")]) == 0
    )
    saved = np.load(tmp_path / "lv.npz")
    reference_index = int(saved["reference_index"])
    assert reference_index in partitions["clean_val"]
    expected = fit_low_variance(store.images[partitions["poison_train"]], store.images[reference_index])
    np.testing.assert_array_equal(saved["pattern"], expected.pattern)


def test_a_new_fitted_trigger_gets_its_fit_command_and_poison_option(fitted_toy, fake_data_modules, store, tmp_path):
    fit = tmp_path / "toyfit_fit.npz"
    common = ["--store", "s", "--partitions", "p.npz", "--seed", "2"]
    assert main(["fit-toyfit", *common, "--shade", "0.5", "--out", str(fit)]) == 0
    argv = ["poison", *common, "--trigger", "toyfit", "--toyfit-fit", str(fit), "--poison-class", "class2",
            "--poison-rate", "0.1", "--strategy", "many-to-one", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["trigger"]["name"] == "toyfit" and manifest["trigger"]["fit"] == str(fit)


def test_poison_cli_rejects_lv_fit_for_other_triggers(fake_data_modules, capsys):
    argv = ["poison", "--store", "s", "--partitions", "p", "--trigger", "bs", "--lv-fit", "x.npz", "--poison-class", "1",
            "--poison-rate", "0.1", "--strategy", "many-to-one", "--seed", "0", "--out", "o"]  # fmt: skip
    assert main(argv) == 2
    assert "--lv-fit was given for trigger 'bs'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.datasets
def test_attack_cli_on_the_real_flowers_store(flowers_zip, tmp_path):
    """fit-lv and poison through the real open_store / load_partitions (Flowers at 32 px to stay quick)."""
    from backdoor_eval.data import ingest
    from backdoor_eval.splits import load_partitions, make_partitions, save_partitions

    store = ingest("flowers", {"path": str(flowers_zip), "size": 32}, tmp_path / "store", progress=False)
    save_partitions(tmp_path / "parts.npz", make_partitions(store.labels, seed=0))
    common = ["--store", str(tmp_path / "store"), "--partitions", str(tmp_path / "parts.npz"), "--seed", "0"]
    assert main(["fit-lv", *common, "--out", str(tmp_path / "lv.npz")]) == 0
    argv = ["poison", *common, "--trigger", "lv", "--lv-fit", str(tmp_path / "lv.npz"), "--poison-class", "rose",
            "--poison-rate", "0.1", "--strategy", "many-to-one", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    partitions = load_partitions(tmp_path / "parts.npz")
    data = load_poisoned(store, partitions, tmp_path / "run")
    rose = store.class_names.index("rose")
    for set_name in ("poison_train", "poison_val"):
        labels = data.sets[set_name][1]
        np.testing.assert_array_equal(
            np.bincount(labels, minlength=5), np.bincount(store.labels[partitions[set_name]], minlength=5)
        )
        assert data.manifest["sets"][set_name]["num_poisoned"] == int(
            0.1 * (store.labels[partitions[set_name]] == rose).sum()
        )
    assert (data.adv_test_labels != rose).all() and data.adv_test_images.shape[1:] == (32, 32, 3)
    assert data.trigger.name == "lv" and data.trigger.alpha == 0.5


def test_a_poison_class_missing_from_a_set_is_named_with_the_set(tmp_path, caplog, capsys):
    """3 images per class: the 76/19/5 then 80/20 split leaves poison_val without one; the partition job warns,
    the poison job names the set."""
    store, parts = tmp_path / "store", tmp_path / "partitions.npz"
    params = json.dumps({"num_classes": 3, "per_class": 3, "size": 8})
    assert main(["ingest", "--dataset", "synthetic", "--params", params, "--out", str(store)]) == 0
    with caplog.at_level("WARNING", logger="backdoor_eval.cli.data"):
        assert main(["partition", "--store", str(store), "--seed", "0", "--out", str(parts)]) == 0
    assert any(
        "the poison_val set holds no image of class(es) class1, class2" in r.getMessage() for r in caplog.records
    )
    capsys.readouterr()
    poison = ["poison", "--store", str(store), "--partitions", str(parts), "--trigger", "bs", "--poison-class", "1"]
    poison += ["--poison-rate", "0.5", "--strategy", "many-to-one", "--seed", "0", "--out", str(tmp_path / "p")]
    assert main(poison) == 2
    assert "error: the poison_val set: poison_class=1 has no images in this set" in capsys.readouterr().err
