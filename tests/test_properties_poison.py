"""Property-based tests (Hypothesis) of the partitions, poison selection, poisoned sets and triggers.

Random class sizes, rates, poison classes, strategies and seeds; small
synthetic images. The invariants are the ones the modules' docstrings state
(docs/decisions.md#partitions, #poison-sampling; eq. 7).
"""

from __future__ import annotations

import math
import re
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from backdoor_eval.names import CLEAN_PARTITIONS, MANY_TO_ONE, ONE_TO_ONE, PARTITIONS, POISONED_PARTITIONS
from backdoor_eval.poison import OVERLAY_FILE, load_poisoned, materialize, num_poisoned, select_poison
from backdoor_eval.splits import SET_WEIGHTS, TRAIN_VAL_WEIGHTS, apportion, make_partitions
from backdoor_eval.triggers import BlackSquare, LowVariance, RandomSquare, Sine, to_float, to_uint8

SEEDS = st.integers(0, 2**32 - 1)
SPLIT_KEYS = st.one_of(st.just(()), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)))
RATES = st.one_of(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True), st.sampled_from([0.05, 0.1, 0.29, 0.3]))


def labels_with(counts: list[int], seed: int) -> np.ndarray:
    """Shuffled int64 labels with ``counts[c]`` images of class ``c``."""
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    return np.random.default_rng(seed).permutation(labels)


def largest_remainder(n: int, weights: tuple[int, ...]) -> list[int]:
    """Hamilton's apportionment of ``n`` by ``weights``: floors, then one each by largest remainder, ties earlier."""
    total = sum(weights)
    floors = [n * w // total for w in weights]
    order = sorted(range(len(weights)), key=lambda j: (-(n * weights[j] % total), j))
    for j in order[: n - sum(floors)]:
        floors[j] += 1
    return floors


# --------------------------------------------------------------------------- apportion and partitions


@given(
    sizes=st.lists(st.integers(0, 500), min_size=1, max_size=12),
    weights=st.one_of(
        st.sampled_from([SET_WEIGHTS, TRAIN_VAL_WEIGHTS]),
        st.lists(st.integers(1, 100), min_size=2, max_size=5).map(tuple),
    ),
)
def test_apportion_rounds_every_cell_and_both_margins(sizes, weights):
    counts = apportion(sizes, weights)
    total = sum(weights)
    assert counts.dtype == np.int64 and counts.shape == (len(sizes), len(weights))
    np.testing.assert_array_equal(counts.sum(axis=1), sizes)
    exact = np.array(sizes)[:, None] * np.array(weights)[None, :]
    floors, ceils = exact // total, -(-exact // total)
    assert ((floors <= counts) & (counts <= ceils)).all()
    assert counts.sum(axis=0).tolist() == largest_remainder(sum(sizes), tuple(weights))


@given(
    counts=st.lists(st.integers(0, 60), min_size=1, max_size=8).filter(any),
    seed=SEEDS,
    split_keys=SPLIT_KEYS,
    shuffle=st.integers(0, 3),
)
def test_partitions_are_a_stratified_deterministic_cover(counts, seed, split_keys, shuffle):
    labels = labels_with(counts, shuffle)  # classes with no image leave gaps in the label values
    parts = make_partitions(labels, seed, split_keys)
    assert list(parts) == list(PARTITIONS)
    union = np.concatenate(list(parts.values()))
    np.testing.assert_array_equal(np.sort(union), np.arange(labels.size))  # disjoint and covering
    for part in parts.values():
        assert part.dtype == np.int64 and (np.diff(part) > 0).all()
    sizes = [c for c in counts if c]
    sets = apportion(sizes, SET_WEIGHTS)
    expected = np.column_stack(
        [apportion(sets[:, 0], TRAIN_VAL_WEIGHTS), apportion(sets[:, 1], TRAIN_VAL_WEIGHTS), sets[:, 2]]
    )
    present = np.flatnonzero(counts)
    per_class = np.column_stack([np.bincount(labels[parts[name]], minlength=len(counts)) for name in PARTITIONS])
    np.testing.assert_array_equal(per_class[present], expected)
    again = make_partitions(labels.copy(), seed, split_keys)
    for name in PARTITIONS:
        np.testing.assert_array_equal(again[name], parts[name])


@given(
    counts=st.lists(st.integers(20, 60), min_size=2, max_size=5),
    seed=SEEDS,
    keys=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=2, max_size=2, unique=True),
)
def test_other_split_keys_or_seeds_give_other_partitions(counts, seed, keys):
    # With 20+ images in each of 2+ classes, two independent draws coincide with
    # probability below 1e-12: for such sets, "usually differ" is "differ".
    labels = labels_with(counts, 0)
    first, other_keys = make_partitions(labels, seed, keys[0]), make_partitions(labels, seed, keys[1])
    other_seed = make_partitions(labels, (seed + 1) % 2**32, keys[0])
    for other in (other_keys, other_seed):
        assert any(not np.array_equal(first[name], other[name]) for name in PARTITIONS)


# --------------------------------------------------------------------------- poison selection


@given(rate=RATES, count=st.integers(0, 10_000))
def test_num_poisoned_is_the_floor_of_rate_times_count(rate, count):
    poisoned = num_poisoned(rate, count)
    exact = Fraction(rate) * count
    # floor(rate * N_t), where a binary rate just below the decimal one (0.29 * 100) still gives 29.
    assert poisoned == math.floor(exact) or (poisoned == math.floor(exact) + 1 and poisoned - exact <= 2e-9)
    assert 0 <= poisoned <= count


@st.composite
def selections(draw):
    """Labels of one set and a poisoning request for them (possibly an impossible one)."""
    counts = draw(st.lists(st.integers(0, 40), min_size=2, max_size=6))
    labels = labels_with(counts, draw(st.integers(0, 3)))
    poison_class = draw(st.integers(0, len(counts) - 1))
    strategy = draw(st.sampled_from([MANY_TO_ONE, ONE_TO_ONE]))
    source = None
    if strategy == ONE_TO_ONE:
        source = draw(st.integers(0, len(counts) - 1).filter(lambda c: c != poison_class))
    return labels, len(counts), poison_class, draw(RATES), strategy, source


@given(request=selections(), seed=SEEDS)
def test_selection_replaces_poison_class_images_by_draws_from_the_sources(request, seed):
    labels, num_classes, poison_class, rate, strategy, source = request
    sources = [source] if strategy == ONE_TO_ONE else [c for c in range(num_classes) if c != poison_class]
    n_target, n_sources = int((labels == poison_class).sum()), int(np.isin(labels, sources).sum())
    rng = np.random.default_rng(seed)
    if n_target == 0:
        with pytest.raises(ValueError, match=rf"poison_class={poison_class} has no images.*allowed"):
            select_poison(labels, poison_class, rate, strategy, source, rng)
        return
    count = num_poisoned(rate, n_target)
    if count > n_sources:
        with pytest.raises(ValueError, match=rf"poison_rate={re.escape(repr(rate))}.*allowed: a lower poison rate"):
            select_poison(labels, poison_class, rate, strategy, source, rng)
        return
    replaced, drawn = select_poison(labels, poison_class, rate, strategy, source, rng)
    for positions in (replaced, drawn):
        assert positions.dtype == np.int64 and positions.size == count
        assert (np.diff(positions) > 0).all()  # sorted, no position twice
    assert (labels[replaced] == poison_class).all()
    assert np.isin(labels[drawn], sources).all() and (labels[drawn] != poison_class).all()
    again = select_poison(labels, poison_class, rate, strategy, source, np.random.default_rng(seed))
    np.testing.assert_array_equal(again[0], replaced)
    np.testing.assert_array_equal(again[1], drawn)


# --------------------------------------------------------------------------- poisoned sets


class Store:
    """What poison.py reads of a store: images, labels, class names."""

    def __init__(self, counts: list[int], size: int, seed: int):
        self.labels = labels_with(counts, seed)
        self.images = np.random.default_rng(seed).integers(0, 256, (self.labels.size, size, size, 3), dtype=np.uint8)
        self.class_names = [f"class{c}" for c in range(len(counts))]
        self.manifest = {"dataset": "tiny"}


@given(
    counts=st.lists(st.integers(10, 40), min_size=2, max_size=5),
    size=st.integers(4, 8),
    rate=st.floats(0.01, 0.5),
    data=st.data(),
    seed=SEEDS,
    split_keys=SPLIT_KEYS,
)
def test_poisoned_sets_relabel_exactly_the_drawn_images_and_keep_every_other(
    counts, size, rate, data, seed, split_keys
):
    store = Store(counts, size, seed % 4)
    parts = make_partitions(store.labels, seed, split_keys)
    poison_class = data.draw(st.integers(0, len(counts) - 1), label="poison class")
    strategy = data.draw(st.sampled_from([MANY_TO_ONE, ONE_TO_ONE]), label="strategy")
    source = None
    if strategy == ONE_TO_ONE:
        source = data.draw(st.integers(0, len(counts) - 1).filter(lambda c: c != poison_class), label="source")
    trigger = BlackSquare(alpha=data.draw(st.floats(0, 1), label="alpha"), size_px=1, offset_px=1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "overlay"
        try:
            manifest = materialize(store, parts, trigger, poison_class, rate, strategy, source, seed, out, split_keys)
        except ValueError as exc:  # too few source images, or none poisoned at this rate: named, nothing written
            assert "allowed: a lower poison rate" in str(exc) or "rounds down to 0 poisoned images" in str(exc)
            assert not out.exists()
            return
        with np.load(out / OVERLAY_FILE) as npz:
            overlay = {key: npz[key] for key in npz.files}
        poisoned = load_poisoned(store, parts, out)
    for name in POISONED_PARTITIONS:
        indices = parts[name]
        images, labels = poisoned.sets[name]
        replaced, drawn = overlay[f"{name}_replaced"], overlay[f"{name}_drawn"]
        count = num_poisoned(rate, int((store.labels[indices] == poison_class).sum()))
        assert replaced.size == drawn.size == count == manifest["sets"][name]["num_poisoned"]
        assert images.shape == (indices.size, size, size, 3) and images.dtype == np.uint8
        assert labels.size == indices.size
        # Class sizes are kept: as many poison-class images leave as triggered copies come in.
        np.testing.assert_array_equal(
            np.bincount(labels, minlength=len(counts)), np.bincount(store.labels[indices], minlength=len(counts))
        )
        kept = indices[~np.isin(indices, replaced)]
        np.testing.assert_array_equal(images[: kept.size], store.images[kept])  # every other image: bit-identical
        np.testing.assert_array_equal(labels[: kept.size], store.labels[kept])
        copies = images[kept.size :]
        assert (labels[kept.size :] == poison_class).all()
        # The copies are the drawn images, triggered: outside the 1 px square they are bit-identical.
        outside = np.ones((size, size), dtype=bool)
        outside[1, 1] = False
        np.testing.assert_array_equal(copies[:, outside], store.images[drawn][:, outside])
    for name in CLEAN_PARTITIONS:
        images, labels = poisoned.sets[name]
        np.testing.assert_array_equal(images, store.images[parts[name]])
        np.testing.assert_array_equal(labels, store.labels[parts[name]])
    assert (poisoned.adv_test_labels != poison_class).all()


# --------------------------------------------------------------------------- triggers (eq. 7)


ALPHAS = st.floats(0, 1)


@st.composite
def triggers(draw, alphas=ALPHAS):
    """A BS, RS or SIN trigger with random geometry / pattern and transparency."""
    kind = draw(st.sampled_from(["bs", "rs", "sin"]))
    alpha = draw(alphas)
    if kind == "bs":
        return BlackSquare(alpha, size_px=draw(st.integers(1, 3)), offset_px=draw(st.integers(0, 3)))
    if kind == "rs":
        return RandomSquare(alpha, size=draw(st.floats(0, 60)))
    amplitude = draw(st.one_of(st.sampled_from([0.4, -0.4, 2.0, -2.0]), st.floats(-2, 2)))  # the paper's is 0.4
    return Sine(alpha, amplitude=amplitude, frequency=draw(st.one_of(st.just(0.05), st.floats(0, 1))))


IMAGES = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=st.tuples(st.integers(1, 3), st.integers(3, 9), st.integers(3, 9), st.just(3)),
    elements=st.floats(0, 1, width=32),
    fill=st.nothing(),  # every pixel drawn, not mostly one value
)


def changed_pixels(trigger, n: int, height: int, width: int, rng_seed: int) -> np.ndarray:
    """Where eq. 7 may change an image, (n or 1, H, W): the mask's zeros."""
    _, mask = trigger.pattern_and_mask(n, height, width, np.random.default_rng(rng_seed))
    return np.broadcast_to(np.asarray(mask)[..., 0] == 0, (n, height, width))


@given(trigger=triggers(), images=IMAGES, rng_seed=SEEDS)
def test_a_trigger_keeps_type_shape_and_range_and_changes_only_where_its_mask_allows(trigger, images, rng_seed):
    n, height, width, _ = images.shape
    try:
        out = trigger.apply(images, np.random.default_rng(rng_seed))
    except ValueError as exc:  # a square that does not fit this image: named, with what is allowed
        assert isinstance(trigger, (BlackSquare, RandomSquare)) and "allowed" in str(exc)
        return
    assert type(out) is np.ndarray and out.dtype == images.dtype and out.shape == images.shape
    assert ((out >= 0) & (out <= 1)).all()
    stored = to_uint8(out)
    assert stored.dtype == np.uint8 and stored.shape == images.shape  # 0..255 by its type
    unchanged = ~changed_pixels(trigger, n, height, width, rng_seed)
    np.testing.assert_array_equal(out[unchanged], images[unchanged])
    again = trigger.apply(images, np.random.default_rng(rng_seed))
    np.testing.assert_array_equal(again, out)


@given(trigger=triggers(alphas=st.just(0.0)), images=IMAGES, rng_seed=SEEDS)
def test_alpha_zero_leaves_images_unchanged(trigger, images, rng_seed):
    try:
        out = trigger.apply(images, np.random.default_rng(rng_seed))
    except ValueError:
        assume(False)  # a square that does not fit: the previous test checks the error
    np.testing.assert_array_equal(out, images)


@given(trigger=triggers(), images=IMAGES.filter(lambda a: a.dtype == np.float32), rng_seed=SEEDS)
def test_torch_images_give_the_numpy_result(trigger, images, rng_seed):
    torch = pytest.importorskip("torch")
    try:
        expected = trigger.apply(images, np.random.default_rng(rng_seed))
    except ValueError:
        assume(False)
    out = trigger.apply(torch.from_numpy(images), np.random.default_rng(rng_seed))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and tuple(out.shape) == images.shape
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


@given(alpha=st.floats(0, 1), reading=st.sampled_from(["literal", "scaled"]), n=st.integers(1, 3), data=st.data())
def test_the_lv_trigger_blends_its_pattern_over_the_whole_image(lv_fit, alpha, reading, n, data):
    height, width = lv_fit.pattern.shape[:2]
    images = data.draw(hnp.arrays(np.float32, (n, height, width, 3), elements=st.floats(0, 1, width=32)))
    trigger = LowVariance(alpha, fit=lv_fit, reading=reading)
    out = trigger.apply(images)
    assert out.dtype == images.dtype and out.shape == images.shape and ((out >= 0) & (out <= 1)).all()
    pattern = trigger.pattern[None]
    expected = np.clip((1 - alpha) * images.astype(np.float64) + alpha * pattern, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    if alpha == 0:
        np.testing.assert_array_equal(out, images)


@given(images=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=4, max_dims=4, max_side=6)))
def test_8_bit_images_survive_the_float_round_trip(images):
    np.testing.assert_array_equal(to_uint8(to_float(images)), images)
