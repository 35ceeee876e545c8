"""Seeds: one scheme for every random stream of a run (docs/decisions.md#seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from backdoor_eval import seeding


def test_streams_are_stable_and_depend_on_seed_purpose_and_keys():
    first = seeding.derived_seed(0, "train/data", 0, 3)
    assert first == seeding.derived_seed(0, "train/data", 0, 3)
    others = {
        seeding.derived_seed(1, "train/data", 0, 3),
        seeding.derived_seed(0, "train/torch", 0, 3),
        seeding.derived_seed(0, "train/data", 1, 3),
        seeding.derived_seed(0, "train/data", 0, 4),
    }
    assert first not in others and len(others) == 4


def test_a_stream_is_the_seed_sequence_of_seed_and_spawn_key():
    # The scheme itself, pinned: changing it would silently change every run's draws.
    expected = np.random.default_rng(np.random.SeedSequence(7, spawn_key=(seeding.PURPOSES["partitions"],))).random(3)
    assert np.array_equal(seeding.rng(7, "partitions").random(3), expected)
    assert seeding.PURPOSES["poison_train/select"] == 1 and seeding.PURPOSES["adv_test/trigger"] == 5


def test_purpose_ids_are_unique():
    assert len(set(seeding.PURPOSES.values())) == len(seeding.PURPOSES)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3", None])
def test_bad_seeds_are_named(seed):
    with pytest.raises(ValueError, match=r"seed=.*allowed: a whole number >= 0"):
        seeding.rng(seed, "partitions")


def test_unknown_purpose_is_named():
    with pytest.raises(ValueError, match=r"seed purpose 'epoch' is unknown; allowed: poison_train/select"):
        seeding.rng(0, "epoch")


def test_derived_seeds_fit_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(seeding.derived_seed(123, "model/init"))


def test_split_ids_name_a_seed_or_a_run_and_parse_back():
    assert seeding.split_id(3) == "seed3"
    assert seeding.parse_split_id("seed3") == (3, ())
    own = seeding.split_id(3, "flowers/resnet50/bs/a1.0/many-to-one/trose/sall/r0.1/none/seed3")
    seed, keys = seeding.parse_split_id(own)
    assert seed == 3 and len(keys) == 2 and own == f"seed3-{keys[0]:08x}{keys[1]:08x}"
    assert own != seeding.split_id(3, "flowers/resnet50/sin/a0.1/many-to-one/trose/sall/r0.1/none/seed3")
    # A run's own split draws from other streams than the seed's.
    assert not np.array_equal(seeding.rng(3, "partitions", *keys).random(4), seeding.rng(3, "partitions").random(4))
    for bad in ("3", "seed", "seed3-xyz", "seed-1"):
        with pytest.raises(ValueError, match="is not a split id"):
            seeding.parse_split_id(bad)
