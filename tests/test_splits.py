"""Partitions (docs/decisions.md#partitions): sizes, stratification, rounding, determinism, file round trip."""

from __future__ import annotations

import numpy as np
import pytest

from backdoor_eval import cli
from backdoor_eval.data import ingest
from backdoor_eval.splits import (
    PARTITIONS,
    SET_WEIGHTS,
    TRAIN_VAL_WEIGHTS,
    apportion,
    load_partitions,
    make_partitions,
    partition_counts,
    save_partitions,
)

FLOWERS_COUNTS = [764, 1052, 784, 733, 984]  # daisy, dandelion, rose, sunflower, tulip


def labels_from_counts(counts, seed=123):
    """Labels with the given class counts, shuffled so that classes are interleaved."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)


def within_rounding(count, exact):
    return np.floor(exact) <= count <= np.ceil(exact)


@pytest.mark.parametrize("counts", [FLOWERS_COUNTS, [6000] * 10, [7, 1, 13, 2, 40, 3], [1, 1]])
def test_sizes_within_rounding_overall_and_per_class(counts):
    labels = labels_from_counts(counts)
    parts = make_partitions(labels, seed=0)
    poison_set = np.concatenate([parts["poison_train"], parts["poison_val"]])
    clean_set = np.concatenate([parts["clean_train"], parts["clean_val"]])
    n = len(labels)
    # Overall: the largest-remainder totals, each within one image of its share.
    assert within_rounding(len(poison_set), 0.76 * n)
    assert within_rounding(len(clean_set), 0.19 * n)
    assert within_rounding(len(parts["adv_test"]), 0.05 * n)
    assert within_rounding(len(parts["poison_train"]), 0.8 * len(poison_set))
    assert within_rounding(len(parts["clean_train"]), 0.8 * len(clean_set))
    # Per class (stratification): each class's share of each part is floor or ceil of its quota.
    for c, n_c in enumerate(counts):
        in_class = lambda idx, c=c: int((labels[idx] == c).sum())  # noqa: E731
        p_c, k_c = in_class(poison_set), in_class(clean_set)
        assert within_rounding(p_c, 0.76 * n_c)
        assert within_rounding(k_c, 0.19 * n_c)
        assert within_rounding(in_class(parts["adv_test"]), 0.05 * n_c)
        assert within_rounding(in_class(parts["poison_train"]), 0.8 * p_c)
        assert within_rounding(in_class(parts["clean_train"]), 0.8 * k_c)
        assert p_c + k_c + in_class(parts["adv_test"]) == n_c


def test_partitions_are_sorted_disjoint_int64_and_cover_everything():
    labels = labels_from_counts(FLOWERS_COUNTS)
    parts = make_partitions(labels, seed=7)
    assert tuple(parts) == PARTITIONS
    union = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(union), np.arange(len(labels)))  # disjoint and complete
    for idx in parts.values():
        assert idx.dtype == np.int64
        assert np.all(np.diff(idx) > 0)


def test_exact_sizes_for_cifar10_and_flowers():
    cifar = make_partitions(labels_from_counts([6000] * 10), seed=0)
    assert {k: len(v) for k, v in cifar.items()} == {
        "poison_train": 36480,
        "poison_val": 9120,
        "clean_train": 9120,
        "clean_val": 2280,
        "adv_test": 3000,
    }
    flowers = make_partitions(labels_from_counts(FLOWERS_COUNTS), seed=0)
    # 4317 x (0.76, 0.19, 0.05) = (3280.92, 820.23, 215.85) -> 3281, 820, 216.
    assert len(flowers["poison_train"]) + len(flowers["poison_val"]) == 3281
    assert len(flowers["clean_train"]) + len(flowers["clean_val"]) == 820
    assert len(flowers["adv_test"]) == 216
    assert len(flowers["poison_val"]) == 656 and len(flowers["clean_val"]) == 164


def test_same_seed_is_byte_identical_and_seeds_differ():
    labels = labels_from_counts(FLOWERS_COUNTS)
    first, again, other = make_partitions(labels, 3), make_partitions(labels, 3), make_partitions(labels, 4)
    for name in PARTITIONS:
        assert first[name].tobytes() == again[name].tobytes()
        assert not np.array_equal(first[name], other[name])
        # Sizes depend only on the class counts, never on the seed.
        assert len(first[name]) == len(other[name])


def test_apportion_rounding_properties_on_random_class_sizes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(0, rng.choice([4, 40, 4000]), size=rng.integers(1, 25))
        for weights in (SET_WEIGHTS, TRAIN_VAL_WEIGHTS, (3, 3, 2, 1)):
            counts = apportion(sizes, weights)
            exact = sizes[:, None] * np.array(weights) / sum(weights)
            assert np.array_equal(counts.sum(axis=1), sizes)
            assert np.all(counts >= np.floor(exact)) and np.all(counts <= np.ceil(exact))
            # Totals: the largest-remainder apportionment of the whole.
            totals_exact = sizes.sum() * np.array(weights) / sum(weights)
            assert np.all(np.abs(counts.sum(axis=0) - totals_exact) < 1)


def test_apportion_prefers_each_class_largest_remainder():
    # 764 x (0.76, 0.19, 0.05) = (580.64, 145.16, 38.2): the left-over image goes to the poison-set.
    assert apportion([764], SET_WEIGHTS).tolist() == [[581, 145, 38]]
    # Three classes of 5 split 50/50: the total 7.5/7.5 ties to the first part (8),
    # so exactly one class gives its odd image to the second part.
    counts = apportion([5, 5, 5], (1, 1))
    assert counts.sum(axis=0).tolist() == [8, 7]
    assert sorted(counts[:, 0].tolist()) == [2, 3, 3]


@pytest.mark.parametrize(
    "labels, seed, message",
    [
        (np.zeros((2, 3), dtype=int), 0, "1-D integer"),
        (np.array([0.0, 1.0]), 0, "1-D integer"),
        (np.array([], dtype=int), 0, "non-empty"),
        (np.array([0, -1]), 0, "non-negative"),
        (np.array([0, 1]), -1, "seed=-1"),
        (np.array([0, 1]), 1.5, "seed=1.5"),
    ],
)
def test_make_partitions_rejects_bad_input(labels, seed, message):
    with pytest.raises(ValueError, match=message):
        make_partitions(labels, seed)


def test_save_and_load_round_trip(tmp_path):
    parts = make_partitions(labels_from_counts(FLOWERS_COUNTS), seed=1)
    path = tmp_path / "sub" / "partitions.npz"
    save_partitions(path, parts)
    loaded = load_partitions(path, num_images=sum(FLOWERS_COUNTS))
    assert set(loaded) == set(PARTITIONS)
    for name in PARTITIONS:
        assert loaded[name].dtype == np.int64 and np.array_equal(loaded[name], parts[name])
    assert [p.name for p in path.parent.iterdir()] == ["partitions.npz"]  # no temporary left behind


def test_load_rejects_bad_files(tmp_path):
    good = {name: np.arange(i * 2, i * 2 + 2) for i, name in enumerate(PARTITIONS)}
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "adv_test"}, "missing \\['adv_test'\\]"),
        "extra": ({**good, "test": np.arange(3)}, "unexpected \\['test'\\]"),
        "overlap": ({**good, "adv_test": np.array([0, 99])}, "not disjoint: indices \\[0\\]"),
        "float": ({**good, "adv_test": np.array([8.0, 9.0])}, "1-D integer"),
        "negative": ({**good, "adv_test": np.array([-1, 9])}, "negative index -1"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=message):
            load_partitions(path)
    np.savez(tmp_path / "good.npz", **good)
    assert len(load_partitions(tmp_path / "good.npz", num_images=10)) == 5
    with pytest.raises(ValueError, match="expected every index 0..10"):
        load_partitions(tmp_path / "good.npz", num_images=11)
    with pytest.raises(ValueError, match="does not exist"):
        load_partitions(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="must be exactly"):
        save_partitions(tmp_path / "bad.npz", {"poison_train": np.arange(3)})


def test_cli_partition_writes_only_the_partitions_file(tmp_path, capsys):
    store = ingest("synthetic", {"num_classes": 3, "per_class": 21}, tmp_path / "store", progress=False)
    out = tmp_path / "parts" / "seed5.npz"
    assert cli.main(["partition", "--store", str(store.root), "--seed", "5", "--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["seed5.npz"]
    loaded = load_partitions(out, num_images=63)
    expected = make_partitions(store.labels, 5)
    assert all(np.array_equal(loaded[name], expected[name]) for name in PARTITIONS)
    capsys.readouterr()
    assert cli.main(["partition", "--store", str(tmp_path / "nope"), "--seed", "5", "--out", str(out)]) == 2
    assert (
        f"backdoor-eval partition: error: {tmp_path / 'nope'} is not a dataset store: "
        "missing images.npy, labels.npy, manifest.json (create one with `backdoor-eval ingest`)"
    ) in capsys.readouterr().err


def test_partition_command_takes_a_seed_or_a_split(tmp_path, capsys):
    from backdoor_eval.cli import main

    store = tmp_path / "store"
    params = '{"num_classes": 3, "per_class": 40, "size": 8}'
    assert main(["ingest", "--dataset", "synthetic", "--params", params, "--out", str(store)]) == 0
    outputs = {}
    for name, option in [
        ("seed", ["--seed", "2"]),
        ("shared", ["--split", "seed2"]),
        ("own", ["--split", "seed2-00000000000000ff"]),
    ]:
        outputs[name] = tmp_path / f"{name}.npz"
        assert main(["partition", "--store", str(store), *option, "--out", str(outputs[name])]) == 0
    seed, shared, own = (load_partitions(outputs[name]) for name in ("seed", "shared", "own"))
    assert all(np.array_equal(seed[name], shared[name]) for name in PARTITIONS)
    assert not all(np.array_equal(seed[name], own[name]) for name in PARTITIONS)
    assert {name: len(own[name]) for name in PARTITIONS} == {name: len(seed[name]) for name in PARTITIONS}
    capsys.readouterr()
    assert main(["partition", "--store", str(store), "--split", "seed2-zz", "--out", str(tmp_path / "bad.npz")]) == 2
    assert (
        "backdoor-eval partition: error: split 'seed2-zz' is not a split id; "
        "allowed: seed<N> or seed<N>-<16 hex digits>"
    ) in capsys.readouterr().err
    assert not (tmp_path / "bad.npz").exists()


def test_partition_counts_are_the_per_class_sizes_make_partitions_draws():
    labels = np.repeat(np.arange(5), FLOWERS_COUNTS)
    parts = make_partitions(labels, seed=3)
    counts = partition_counts(FLOWERS_COUNTS)
    assert list(counts) == list(PARTITIONS)
    for name in PARTITIONS:
        np.testing.assert_array_equal(np.bincount(labels[parts[name]], minlength=5), counts[name])
