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
