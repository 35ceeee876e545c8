"""Per-run data partitions (paper section 3, Fig. 3; docs/decisions.md#partitions).

The whole dataset is split, stratified by class, into poison-set (76%),
clean-set (19%) and adversarial-test (5%); poison-set and clean-set are each
split 80/20 into train and validation, stratified again. The result is a pure
function of ``(labels, seed)``.

Rounding. Class sizes rarely divide evenly, so each split is an
*apportionment* with two margins, and ``apportion`` settles it the same way
at both levels:

1. The totals: each part gets ``floor(N * fraction)``, and the images left
   over go one each to the parts with the largest remainders (largest-
   remainder, or Hamilton, method; ties go to the earlier part). So every
   total is within one image of ``N * fraction`` and the totals sum to ``N``.
2. Per class: each class gives each part ``floor`` or ``ceil`` of
   ``n_class * fraction`` (never further off than one image), and its
   left-over images go to the parts with the largest remainders, as above.
3. If the per-class choices do not add up to the totals of step 1, the
   fewest possible left-over images are moved between parts, each time
   within the class where the move costs the least remainder (ties: the
   lower class index), keeping every class within floor/ceil of its share.
   Such moves always exist (a two-way table can always be rounded so that
   cells and margins are all within one unit).

The counts depend only on the class sizes; the seed only decides which
images fill them: one permutation per class, in class order, drawn from
the seed's ``partitions`` stream (:mod:`backdoor_eval.seeding`); its first
images form the poison-set (its first 80% the poison-train), the next the
clean-set, the rest adversarial-test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backdoor_eval import seeding
from backdoor_eval.io import reading, rebuild_hint, write_npz
from backdoor_eval.names import PARTITIONS

# Fractions as integer weights, so the rounding is exact (no 0.76 * 100 = 76.00000000000001).
SET_WEIGHTS = (76, 19, 5)  # poison-set, clean-set, adversarial-test
TRAIN_VAL_WEIGHTS = (80, 20)  # train, validation within each set


def apportion(class_sizes: Sequence[int] | np.ndarray, weights: Sequence[int]) -> np.ndarray:
    """Split each class's size into parts proportional to ``weights``; see the module docstring.

    Returns int64 counts ``(num_classes, num_parts)`` whose rows sum to
    ``class_sizes``, whose every cell is floor or ceil of
    ``size * weight / sum(weights)``, and whose column totals are the
    largest-remainder apportionment of ``sum(class_sizes)``.
    """
    sizes = np.asarray(class_sizes)
    weight = np.asarray(weights)
    if sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer) or (sizes < 0).any():
        raise ValueError(f"class_sizes {class_sizes!r} must be a 1-D sequence of non-negative ints")
    if weight.ndim != 1 or weight.size < 2 or not np.issubdtype(weight.dtype, np.integer) or (weight <= 0).any():
        raise ValueError(f"weights {weights!r} must be at least 2 positive ints")
    sizes, weight = sizes.astype(np.int64), weight.astype(np.int64)
    denominator = int(weight.sum())

    def hamilton(n: int) -> tuple[np.ndarray, np.ndarray]:
        base, remainder = np.divmod(n * weight, denominator)
        # Largest remainder first; ties to the earlier part (stable sort of -remainder).
        order = np.argsort(-remainder, kind="stable")
        counts = base.copy()
        counts[order[: n - int(base.sum())]] += 1
        return counts, remainder

    totals, _ = hamilton(int(sizes.sum()))
    counts = np.empty((sizes.size, weight.size), dtype=np.int64)
    remainders = np.empty_like(counts)
    for c, n in enumerate(sizes):
        counts[c], remainders[c] = hamilton(int(n))
    floors = (sizes[:, None] * weight[None, :]) // denominator
    rounded_up = counts > floors  # cells holding one of their class's left-over images

    # Step 3: move left-over images from parts over their total to parts under it.
    while True:
        excess = counts.sum(axis=0) - totals
        if not excess.any():
            return counts
        path = _cheapest_move_path(rounded_up, remainders, excess)
        if path is None:  # cannot happen (see the module docstring); guards against a silent loop
            raise RuntimeError(f"cannot round class sizes {sizes.tolist()} to totals {totals.tolist()}")
        for c, a, b in path:
            counts[c, a] -= 1
            counts[c, b] += 1
            rounded_up[c, a], rounded_up[c, b] = False, True


def _cheapest_move_path(rounded_up: np.ndarray, remainders: np.ndarray, excess: np.ndarray):
    """Moves ``[(class, from_part, to_part), ...]`` taking one image from a part over its total
    to a part under it: fewest moves first, then least remainder given up.

    Class ``c`` can pass a left-over image from part ``a`` to part ``b`` when
    ``a`` holds one of its left-overs and ``b`` does not but has a remainder
    (so ``b`` stays within ceil). A path through a third part chains two
    classes. Bellman-Ford over the parts, with (moves, cost) compared in order.
    """
    num_parts = excess.size
    edges = {}
    for a in range(num_parts):
        for b in range(num_parts):
            movable = np.flatnonzero(rounded_up[:, a] & ~rounded_up[:, b] & (remainders[:, b] > 0))
            if a != b and movable.size:
                cost = remainders[movable, a] - remainders[movable, b]
                best = int(np.argmin(cost))  # argmin keeps the lowest class index on ties
                edges[a, b] = (int(cost[best]), int(movable[best]))
    reach = {p: ((0, 0), []) for p in range(num_parts) if excess[p] > 0}
    for _ in range(num_parts - 1):
        for (a, b), (cost, c) in sorted(edges.items()):
            if a in reach:
                (moves, total), path = reach[a]
                candidate = ((moves + 1, total + cost), [*path, (c, a, b)])
                if b not in reach or candidate[0] < reach[b][0]:
                    reach[b] = candidate
    ends = sorted((reach[p][0], p) for p in range(num_parts) if excess[p] < 0 and p in reach)
    return reach[ends[0][1]][1] if ends else None


def partition_counts(class_sizes: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Images per class in each partition, for classes of ``class_sizes``: int64 arrays by partition name.

    Depends on the class sizes only (see the module docstring), so the number
    of images a run poisons is known before any partition is drawn.
    """
    set_counts = apportion(class_sizes, SET_WEIGHTS)
    poison_split = apportion(set_counts[:, 0], TRAIN_VAL_WEIGHTS)
    clean_split = apportion(set_counts[:, 1], TRAIN_VAL_WEIGHTS)
    columns = (poison_split[:, 0], poison_split[:, 1], clean_split[:, 0], clean_split[:, 1], set_counts[:, 2])
    return dict(zip(PARTITIONS, columns))


def make_partitions(labels: np.ndarray, seed: int, split_keys: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """Partitions of a dataset with ``labels`` (docs/decisions.md#partitions): sorted int64 store indices per part.

    Stratified 76/19/5 into poison-set, clean-set and adversarial-test, then
    80/20 train/validation within poison-set and clean-set. Disjoint; their
    union is every index. See the module docstring for the rounding.
    ``split_keys`` extend the stream's key for a run's own split
    (:func:`backdoor_eval.seeding.parse_split_id`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.min() < 0:
        raise ValueError(f"labels must be non-negative class indices, got minimum {labels.min()}")
    rng = seeding.rng(seed, "partitions", *split_keys)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    counts = partition_counts([m.size for m in members])

    parts: dict[str, list[np.ndarray]] = {name: [] for name in PARTITIONS}
    for c, indices in enumerate(members):
        shuffled = rng.permutation(indices)
        bounds = np.cumsum([0] + [int(counts[name][c]) for name in PARTITIONS])
        for name, start, stop in zip(PARTITIONS, bounds[:-1], bounds[1:]):
            parts[name].append(shuffled[start:stop])
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}


def save_partitions(path: str | os.PathLike, parts: dict[str, np.ndarray]) -> None:
    """Write ``parts`` to ``path`` (npz, atomically) after checking them like ``load_partitions``."""
    _check_partitions(parts, str(path))
    write_npz(path, **{name: np.asarray(parts[name], dtype=np.int64) for name in PARTITIONS})


def load_partitions(path: str | os.PathLike, num_images: int | None = None) -> dict[str, np.ndarray]:
    """Read partitions from ``path``, checking names, index types and disjointness.

    With ``num_images``, also checks that the union is exactly ``0..num_images-1``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"partitions file {str(path)!r} does not exist (create it with `backdoor-eval partition`)")
    with reading(path, "partitions file", rebuild_hint("partition")), np.load(path, allow_pickle=False) as npz:
        parts = {name: npz[name] for name in npz.files}
    _check_partitions(parts, str(path), num_images)
    return parts


def _check_partitions(parts: dict[str, np.ndarray], where: str, num_images: int | None = None) -> None:
    names = set(parts)
    if names != set(PARTITIONS):
        missing, extra = sorted(set(PARTITIONS) - names), sorted(names - set(PARTITIONS))
        raise ValueError(
            f"partitions in {where} must be exactly {', '.join(PARTITIONS)}; "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    for name in PARTITIONS:
        array = np.asarray(parts[name])
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"partition {name!r} in {where} must be a 1-D integer array, got {array.dtype} {array.shape}"
            )
        if array.size and array.min() < 0:
            raise ValueError(f"partition {name!r} in {where} holds negative index {array.min()}")
    union = np.concatenate([np.asarray(parts[name], dtype=np.int64) for name in PARTITIONS])
    values, counts = np.unique(union, return_counts=True)
    if (counts > 1).any():
        shared = values[counts > 1][:5].tolist()
        raise ValueError(f"partitions in {where} are not disjoint: indices {shared} appear more than once")
    if num_images is not None and (values.size != num_images or (values.size and values[-1] != num_images - 1)):
        raise ValueError(f"partitions in {where} cover {values.size} indices, expected every index 0..{num_images - 1}")
